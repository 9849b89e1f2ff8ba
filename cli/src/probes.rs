//! The plain HTTP endpoints of `ferry controller` and `ferry agent`: the kubelet's probes and
//! Prometheus's scrapes. A handful of GETs a minute need no HTTP framework.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a path answers.
pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn ok(text: &str) -> Response {
        Response {
            status: "200 OK",
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n"),
        }
    }

    pub fn unavailable(reason: String) -> Response {
        Response {
            status: "503 Service Unavailable",
            content_type: "text/plain; charset=utf-8",
            body: format!("{reason}\n"),
        }
    }

    pub fn not_found() -> Response {
        Response {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: String::new(),
        }
    }
}

/// Answers every connection on `listener` with what `respond` gives for the request's path.
pub async fn serve<F, Fut>(listener: TcpListener, respond: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send,
{
    loop {
        let Ok((mut connection, _)) = listener.accept().await else {
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let Some(path) = read_request_path(&mut connection).await else {
                return;
            };
            let response = respond(path).await;
            let head = format!(
                "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                response.status,
                response.content_type,
                response.body.len()
            );
            let _ = connection.write_all(head.as_bytes()).await;
            let _ = connection.write_all(response.body.as_bytes()).await;
            let _ = connection.shutdown().await;
        });
    }
}

/// Reads the request up to the end of its headers (closing on unread data would reset the
/// connection before the client reads the answer) and returns its path.
async fn read_request_path(connection: &mut tokio::net::TcpStream) -> Option<String> {
    const MAX_REQUEST: usize = 16 * 1024;
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let read = connection.read(&mut buffer).await.ok()?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let request = String::from_utf8_lossy(&request);
    let target = request.split_whitespace().nth(1)?;
    // Prometheus may add query parameters; they change nothing here.
    Some(target.split('?').next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(address: std::net::SocketAddr, request: &[&str]) -> String {
        let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
        // The request arrives in pieces, as it may over a network.
        for piece in request {
            connection.write_all(piece.as_bytes()).await.unwrap();
            connection.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut response = String::new();
        connection.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn each_path_gets_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |path: String| async move {
            match path.as_str() {
                "/healthz" => Response::ok("ok"),
                "/metrics" => Response {
                    status: "200 OK",
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body: "up 1\n# EOF\n".to_owned(),
                },
                "/readyz" => Response::unavailable("the API server: refused".to_owned()),
                _ => Response::not_found(),
            }
        }));
        let metrics = get(
            address,
            &["GET /metrics?x=1 HTTP/1.1\r\n", "accept: */*\r\n\r\n"],
        )
        .await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: application/openmetrics-text"),
            "{metrics}"
        );
        assert!(metrics.contains("content-length: 11\r\n"), "{metrics}");
        assert!(metrics.ends_with("\r\n\r\nup 1\n# EOF\n"), "{metrics}");
        let healthz = get(address, &["GET /healthz HTTP/1.1\r\n\r\n"]).await;
        assert!(healthz.ends_with("\r\n\r\nok\n"), "{healthz}");
        let readyz = get(address, &["GET /readyz HTTP/1.1\r\n\r\n"]).await;
        assert!(
            readyz.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{readyz}"
        );
        let missing = get(address, &["GET /other HTTP/1.1\r\n\r\n"]).await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
    }
}
