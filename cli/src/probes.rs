//! The plain HTTP endpoints of `ferry controller` and `ferry agent`: the kubelet's probes and
//! Prometheus's scrapes, served by hyper (already in the binary for the Kubernetes and gRPC
//! clients).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A client gets this long to send its request's headers; a stalled one is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TEXT: &str = "text/plain; charset=utf-8";

/// What a path answers.
pub struct Response {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn ok(text: &str) -> Response {
        Response {
            status: StatusCode::OK,
            content_type: TEXT,
            body: format!("{text}\n"),
        }
    }

    /// A metrics page in `content_type` (OpenMetrics text).
    pub fn metrics(content_type: &'static str, body: String) -> Response {
        Response {
            status: StatusCode::OK,
            content_type,
            body,
        }
    }

    pub fn unavailable(reason: String) -> Response {
        Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: TEXT,
            body: format!("{reason}\n"),
        }
    }

    pub fn not_found() -> Response {
        Response {
            status: StatusCode::NOT_FOUND,
            content_type: TEXT,
            body: String::new(),
        }
    }
}

/// Answers every connection on `listener` with what `respond` gives for the request's path.
pub async fn serve<F, Fut>(listener: TcpListener, respond: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    loop {
        let Ok((connection, _)) = listener.accept().await else {
            continue;
        };
        let respond = respond.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let answer = respond(request.uri().path().to_owned());
            async move {
                let answer = answer.await;
                let response = hyper::Response::builder()
                    .status(answer.status)
                    .header(CONTENT_TYPE, answer.content_type)
                    .body(Full::new(Bytes::from(answer.body)))
                    .expect("a status and a content type are a valid response");
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(connection), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(message = "a probe or scrape connection failed", %error);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: std::net::SocketAddr, request: &[&str]) -> String {
        let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
        // The request arrives in pieces, as it may over a network.
        for piece in request {
            connection.write_all(piece.as_bytes()).await.unwrap();
            connection.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
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
                "/metrics" => Response::metrics(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    "up 1\n# EOF\n".to_owned(),
                ),
                "/readyz" => Response::unavailable("the API server: refused".to_owned()),
                _ => Response::not_found(),
            }
        }));
        let metrics = get(
            address,
            &[
                "GET /metrics?x=1 HTTP/1.1\r\n",
                "accept: */*\r\nconnection: close\r\n\r\n",
            ],
        )
        .await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: application/openmetrics-text"),
            "{metrics}"
        );
        assert!(metrics.contains("content-length: 11\r\n"), "{metrics}");
        assert!(metrics.ends_with("\r\n\r\nup 1\n# EOF\n"), "{metrics}");
        let healthz = get(
            address,
            &["GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n"],
        )
        .await;
        assert!(healthz.ends_with("\r\n\r\nok\n"), "{healthz}");
        let readyz = get(
            address,
            &["GET /readyz HTTP/1.1\r\nconnection: close\r\n\r\n"],
        )
        .await;
        assert!(
            readyz.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{readyz}"
        );
        let missing = get(
            address,
            &["GET /other HTTP/1.1\r\nconnection: close\r\n\r\n"],
        )
        .await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
    }
}
