//! Finding the test environment and connecting to its servers.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};

const HOW_TO_START: &str = "start it with `tests/env/up` (the first run builds the servers, which takes \
     a while), or run every test with `tests/run`, which does it for you";

/// The endpoints and credentials of a running test environment, read from the env file that
/// `tests/env/up` writes.
#[derive(Debug, Clone)]
pub struct TestEnv {
    path: PathBuf,
    vars: HashMap<String, String>,
}

impl TestEnv {
    /// The environment for this test process: loaded and checked once, then shared.
    ///
    /// # Panics
    /// When the env file is missing or a server does not answer, with the command that starts it:
    /// a test that needs a server never passes without one.
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            ferry_protocol::tls::install_crypto_provider();
            match TestEnv::load() {
                Ok(env) => env,
                Err(message) => panic!("{message}"),
            }
        })
    }

    /// Reads the env file (`$FERRY_TEST_ENV`, else `$FERRY_CACHE/env/test.env`, else
    /// `~/.cache/ferry/env/test.env`) and checks that every server listens.
    pub fn load() -> Result<TestEnv, String> {
        let path = env_file_path();
        let text = std::fs::read_to_string(&path).map_err(|error| {
            format!(
                "Ferry's test environment is not up: cannot read {} ({error}); {HOW_TO_START}",
                path.display()
            )
        })?;
        let env = TestEnv {
            vars: parse_env_file(&text),
            path,
        };
        env.check_servers_listen()?;
        Ok(env)
    }

    /// The value of `key` in the env file.
    ///
    /// # Panics
    /// When the env file lacks it: the file was written by another version of `tests/env/up`.
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "{} has no {key}; it was written by an older tests/env/up: run tests/env/down, then tests/env/up",
                self.path.display()
            )
        })
    }

    /// The directory the environment runs in (`~/.cache/ferry/env`), where the env file is.
    pub fn run_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn kubeconfig_path(&self) -> &Path {
        Path::new(self.var("KUBECONFIG"))
    }

    /// A client for the test API server, as the cluster admin.
    pub async fn kube_client(&self) -> kube::Client {
        client_for(self.kubeconfig_path()).await
    }

    /// A client for the recovery cluster: a second, empty API server (its own keys in the same
    /// etcd, no controller manager), standing for a new cluster after a disaster.
    pub async fn recovery_kube_client(&self) -> kube::Client {
        client_for(Path::new(self.var("FERRY_TEST_RECOVERY_KUBECONFIG"))).await
    }

    pub fn s3_endpoint(&self) -> &str {
        self.var("FERRY_TEST_S3_ENDPOINT")
    }

    pub fn s3_bucket(&self) -> &str {
        self.var("FERRY_TEST_S3_BUCKET")
    }

    pub fn s3_region(&self) -> &str {
        self.var("FERRY_TEST_S3_REGION")
    }

    pub fn s3_credentials(&self) -> Credentials {
        Credentials::new(
            self.var("FERRY_TEST_S3_ACCESS_KEY"),
            self.var("FERRY_TEST_S3_SECRET_KEY"),
            None,
            None,
            "ferry-test-env",
        )
    }

    /// A client for MinIO: path-style addressing, and checksums only where an operation requires
    /// one, which every S3-compatible store accepts.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(self.s3_endpoint())
            .region(aws_sdk_s3::config::Region::new(self.s3_region().to_owned()))
            .credentials_provider(self.s3_credentials())
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn ec2_endpoint(&self) -> &str {
        self.var("FERRY_TEST_EC2_ENDPOINT")
    }

    pub fn ec2_region(&self) -> &str {
        self.var("FERRY_TEST_EC2_REGION")
    }

    /// A client for moto's EC2 endpoint. moto accepts any credentials.
    pub fn ec2_client(&self) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version_latest()
            .endpoint_url(self.ec2_endpoint())
            .region(aws_sdk_ec2::config::Region::new(
                self.ec2_region().to_owned(),
            ))
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "ferry-test-env",
            ))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    fn check_servers_listen(&self) -> Result<(), String> {
        let kube_server = kube::config::Kubeconfig::read_from(self.kubeconfig_path())
            .ok()
            .and_then(|config| config.clusters.into_iter().next())
            .and_then(|cluster| cluster.cluster)
            .and_then(|cluster| cluster.server)
            .ok_or_else(|| {
                format!(
                    "{} names no API server; {HOW_TO_START}",
                    self.kubeconfig_path().display()
                )
            })?;
        let servers = [
            ("kube-apiserver", kube_server.as_str()),
            ("MinIO", self.s3_endpoint()),
            ("moto (EC2)", self.ec2_endpoint()),
        ];
        for (name, url) in servers {
            let addr = socket_addr_of(url)
                .ok_or_else(|| format!("{name}: cannot parse endpoint {url}"))?;
            if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
                return Err(format!(
                    "{name} does not answer at {url} (named by {}); the test environment is down: {HOW_TO_START}",
                    self.path.display()
                ));
            }
        }
        Ok(())
    }
}

fn env_file_path() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_TEST_ENV") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("FERRY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/ferry")
        });
    cache.join("env/test.env")
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn socket_addr_of(url: &str) -> Option<SocketAddr> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{authority}:{port}")
    };
    with_port.to_socket_addrs().ok()?.next()
}

async fn client_for(kubeconfig_path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", kubeconfig_path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("the test kubeconfig is valid");
    kube::Client::try_from(config).expect("a kube client for the test API server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_become_variables() {
        let vars = parse_env_file("# comment\nA=1\n\n B = x=y \nnot a variable\n");
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(vars.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(vars.len(), 2);
    }

    #[test]
    fn endpoints_resolve_to_socket_addresses() {
        assert_eq!(
            socket_addr_of("http://127.0.0.1:9000"),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            socket_addr_of("https://127.0.0.1/x"),
            Some("127.0.0.1:443".parse().unwrap())
        );
        assert_eq!(socket_addr_of("not a url"), None);
    }

    #[test]
    fn a_missing_env_file_says_how_to_start_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let error = temp_env_var(
            "FERRY_TEST_ENV",
            dir.path().join("absent.env"),
            TestEnv::load,
        )
        .unwrap_err();
        assert!(error.contains("tests/env/up"), "{error}");
        assert!(error.contains("absent.env"), "{error}");
    }

    #[test]
    fn a_server_that_does_not_answer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n"
            ),
        )
        .unwrap();
        let env_file = dir.path().join("test.env");
        let dead = format!("http://127.0.0.1:{port}");
        std::fs::write(
            &env_file,
            format!(
                "KUBECONFIG={}\nFERRY_TEST_S3_ENDPOINT={dead}\nFERRY_TEST_EC2_ENDPOINT={dead}\n",
                kubeconfig.display()
            ),
        )
        .unwrap();
        let error = temp_env_var("FERRY_TEST_ENV", env_file, TestEnv::load).unwrap_err();
        assert!(error.contains("kube-apiserver does not answer"), "{error}");
        assert!(error.contains("tests/env/up"), "{error}");
    }

    fn temp_env_var<T>(key: &str, value: PathBuf, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap();
        // SAFETY: serialised by LOCK, and no other code in this test binary reads this variable.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(key, &value)
        };
        let result = f();
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(key)
        };
        result
    }
}
