//! One TLS crypto provider for the whole process.
//!
//! kube, tonic and the AWS SDK all speak TLS through rustls. rustls picks its crypto provider at the
//! first handshake; when more than one provider is compiled in and none was installed, that first
//! handshake panics. Ferry compiles only aws-lc-rs and installs it explicitly at start-up, so the
//! choice never depends on which dependency happens to connect first.

use std::sync::Once;

/// Installs aws-lc-rs as the process-wide rustls crypto provider.
///
/// Call it at the top of every `main` and in test harnesses; later calls do nothing.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first, by code outside Ferry's control; it is
        // still a single provider, which is all rustls needs.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_aws_lc_rs_as_the_default_provider() {
        install_crypto_provider();
        install_crypto_provider();
        let provider =
            rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        let expected = rustls::crypto::aws_lc_rs::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(provider), names(&expected));
    }
}
