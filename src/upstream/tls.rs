//! The rustls client configuration for https origins: the public web PKI (webpki-roots) plus the
//! PEM certificates of `--ca-file`. Certificate verification is never switched off; a failed
//! verification is a TLS error that answers 502.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

/// Builds the client configuration. Reads `ca_file` (blocking: start-up only). The crypto
/// provider is passed explicitly so that no process-wide default can be picked at run time.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("--ca-file: cannot read {}: {e}", path.display()))?;
        let mut added = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert =
                cert.map_err(|e| format!("--ca-file: {} is not valid PEM: {e}", path.display()))?;
            roots.add(cert).map_err(|e| {
                format!(
                    "--ca-file: {} holds an unusable certificate: {e}",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "--ca-file: {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("--origin: TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
