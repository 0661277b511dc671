//! TLS for the HTTP listeners (`--tls-cert`, `--tls-key`), and the one place
//! that decides which cryptography rustls uses in every kv program.
//!
//! kv compiles rustls with the `ring` provider only: the default, aws-lc-rs,
//! needs cmake and a C toolchain to build, and with a single provider there is
//! nothing to choose between at run time. The server side names ring
//! explicitly; reqwest asks for the process default, which
//! [`install_crypto_provider`] sets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// The TLS flags both programs take. Without them, HTTP is served in the clear.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve HTTPS with the certificate chain in this PEM file (the server's
    /// certificate first, then any intermediates). Needs --tls-key.
    #[arg(long, env = "KV_TLS_CERT", requires = "tls_key", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM file holding the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KV_TLS_KEY", requires = "tls_cert", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

/// Why the TLS files could not be used. Each message names the file, so the
/// one line a program prints at startup says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {cause}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{what} {} is not valid PEM: {cause}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        cause: pem::Error,
    },
    #[error("no certificate found in {what} {} (expected a PEM \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error(
        "no private key found in {} (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the TLS certificate {} and key {} cannot be used together: {cause}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
}

impl TlsArgs {
    /// Reads the certificate and key into an acceptor, or `None` when TLS is off.
    pub fn load(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let chain = read_certificates(cert, "TLS certificate")?;
        let private_key = read_private_key(key)?;
        let config_error = |cause| TlsError::Config {
            cert: cert.clone(),
            key: key.clone(),
            cause,
        };
        let mut config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(config_error)?;
        // The accept loop serves both versions (hyper-util's auto builder), so
        // offer both and let the client choose.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// Every certificate in a PEM file: a server's chain, or CAs to trust. `what`
/// names the file in messages ("TLS certificate", "CA file").
pub fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsError::Pem {
            what,
            path: path.to_owned(),
            cause,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Makes ring the process-wide rustls provider, for the clients (reqwest)
/// that ask rustls for its default rather than taking one. A provider already
/// installed by an embedding program is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The rustls error behind a failed connection (an unknown issuer, a name
/// mismatch), found through the I/O errors that carry it (hyper-rustls wraps
/// tokio-rustls's `io::Error` in another). `Error::source` of an `io::Error`
/// skips the error it wraps, so the walk steps into `get_ref` instead.
pub fn rustls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        current = match err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(wrapped) => Some(wrapped),
            None => err.source(),
        };
    }
    None
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "TLS key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|cause| match cause {
        pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_owned() },
        cause => TlsError::Pem {
            what: "TLS key",
            path: path.to_owned(),
            cause,
        },
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        what,
        path: path.to_owned(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `load` gives for these files.
    fn load_error(cert: &Path, key: &Path) -> String {
        let args = TlsArgs {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
        };
        match args.load() {
            Ok(_) => panic!("{} and {} were accepted", cert.display(), key.display()),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn the_rustls_error_is_found_inside_nested_io_errors() {
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, rustls));
        let found = rustls_cause(&nested).expect("found");
        assert!(found.to_string().contains("UnknownIssuer"), "{found}");
        assert!(rustls_cause(&std::io::Error::other("refused")).is_none());
    }

    #[test]
    fn no_files_means_no_tls() {
        assert!(TlsArgs::default().load().unwrap().is_none());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing to see\n").unwrap();

        let message = load_error(&missing, &empty);
        assert!(message.starts_with("cannot read TLS certificate "), "{message}");
        assert!(message.contains("missing.pem"), "{message}");

        let message = load_error(&empty, &empty);
        assert!(
            message.starts_with("no certificate found in TLS certificate "),
            "{message}"
        );

        let message = read_private_key(&empty).unwrap_err().to_string();
        assert!(message.starts_with("no private key found in "), "{message}");
        assert!(message.contains("empty.pem"), "{message}");
    }
}
