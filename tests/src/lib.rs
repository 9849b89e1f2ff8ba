//! The harness Ferry's integration tests share.
//!
//! Tests run against real servers on loopback that `tests/env/up` builds and starts: etcd,
//! kube-apiserver and kube-controller-manager, MinIO, and moto's server as the EC2 endpoint. `up`
//! writes an env file naming their endpoints; [`TestEnv::load`] reads it and fails, with the command
//! to run, when the environment is not up. Nothing here fakes a server.
//!
//! Each test takes what it touches for itself, so tests run in parallel and leave nothing behind:
//! - [`TestNamespace`]: a fresh namespace, deleted when dropped;
//! - [`BucketPrefix`]: a fresh prefix in the test bucket, emptied when dropped;
//! - [`RunningController`]: Ferry's controller in the test process, on a namespace of its own;
//! - [`RunningAgent`]: Ferry's node agent as a `ferry agent` process for one [`FakeKubelet`];
//! - [`FakeKubelet`]: most tests play the kubelet's part: a kubelet root directory with a volume
//!   directory per pod UID, Node objects, and pod bindings;
//! - [`real_cluster`]: Ferry on the environment's real node, installed from deploy/ and driven
//!   with `kubectl` and the `ferry` CLI as users do (tests/tests/real_cluster.rs).

mod agent;
mod controller;
mod env;
mod fault_proxy;
mod kubelet;
mod namespace;
pub mod real_cluster;
pub mod real_node;
mod s3;
mod tls_front;

pub use agent::{RunningAgent, agent_ca, ferry_binary};
pub use controller::{
    CREDENTIALS_SECRET, HasPhase, RunningController, create_object, finished, installation_key,
    summary,
};
pub use env::TestEnv;
pub use fault_proxy::{FaultConfig, FaultCounts, FaultKind, FaultProxy, RequestHead};
pub use kubelet::{FakeKubelet, run_job};
pub use namespace::{TestNamespace, delete_namespace_and_wait, delete_pv_and_wait, wait_bound};
pub use s3::BucketPrefix;
pub use tls_front::TlsFront;

/// How long a test waits for the control plane to act (a namespace to finalize, a PVC to bind)
/// before it fails. Generous, because CI's two cores also compile and run other tests meanwhile.
pub const CONVERGENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// A name no other test (or earlier run) uses: `prefix` and a random suffix, valid as a DNS label.
/// The workspace's root, the checkout the tests run from. Read when the test runs (cargo sets
/// `CARGO_MANIFEST_DIR` for every test binary it runs), not when it was compiled: CI builds a fresh
/// clone into the same cached target directory, and cargo reuses a crate compiled in another
/// checkout when its sources are the same, with the other checkout's path compiled in.
pub fn workspace_root() -> std::path::PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    // Every package of the workspace is one directory below its root.
    package
        .parent()
        .expect("a package directory has a parent")
        .to_owned()
}

pub fn unique_name(prefix: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &suffix[..10])
}

/// `len` bytes that do not compress and that no other seed repeats (xorshift), for volume data
/// whose deduplication a test measures.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Opens the repository at `url` in the test bucket and runs `work` on it, on a blocking thread:
/// the data mover is synchronous and runs its own S3 runtime.
pub async fn in_repository<T: Send + 'static>(
    url: &str,
    password: Vec<u8>,
    work: impl FnOnce(&std::sync::Arc<ferry_mover::Repository>) -> T + Send + 'static,
) -> T {
    let env = TestEnv::get();
    let options = ferry_mover::S3Options {
        endpoint: Some(env.s3_endpoint().to_owned()),
        region: env.s3_region().to_owned(),
        path_style: true,
        credentials: Some(env.s3_credentials()),
        ..Default::default()
    };
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let backend = ferry_mover::open_backend(&url, &options)
            .unwrap_or_else(|error| panic!("opening {url}: {error}"));
        let repository = ferry_mover::Repository::open(backend, &password)
            .unwrap_or_else(|error| panic!("opening the repository {url}: {error}"));
        work(&std::sync::Arc::new(repository))
    })
    .await
    .expect("the repository work")
}

/// Applies Ferry's CRDs (generated from the same types as deploy/crds.yaml) and waits until the
/// API server serves them.
pub async fn install_ferry_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in ferry_protocol::crd::all() {
        let name = kube::ResourceExt::name_any(&crd);
        crds.patch(
            &name,
            &PatchParams::apply("ferry-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|error| panic!("applying the CRD {name}: {error}"));
        tokio::time::timeout(
            CONVERGENCE_TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("the CRD {name} is not established"))
        .unwrap();
    }
}

/// Deterministic text as a database dump or a log holds it: rows of a number and five words from
/// a vocabulary of 300, in no fixed order. Every seed gives other rows of the same vocabulary, so
/// a compression dictionary trained on some seeds helps with the others.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = Vec::with_capacity(len + 64);
    while text.len() < len {
        text.extend_from_slice(format!("{:06}|", next() % 1_000_000).as_bytes());
        for _ in 0..5 {
            let word = next() % 300;
            let letters = 3 + (word % 7) as usize;
            text.extend((0..letters).map(|i| b'a' + ((word * 31 + i as u64 * 17) % 26) as u8));
            text.push(b' ');
        }
        text.push(b'\n');
    }
    text.truncate(len);
    text
}

/// Deterministic incompressible bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}
