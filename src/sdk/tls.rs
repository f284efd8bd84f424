//! Transport security of the clients: which server URLs are acceptable, and the rustls
//! configuration that https:// and wss:// use.
//!
//! Plain http:// exposes everything the directory says (the keys messages are sealed to) to
//! anyone on the path, so it is accepted only to a loopback address (a relay on this machine,
//! a TLS-terminating proxy beside it) unless the caller says otherwise
//! ([`ClientOptions::insecure_http`](super::ClientOptions)). Certificates are checked against
//! the platform's roots, or only against a given CA bundle (a private CA: `--ca-file`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::Error;

/// Checks the scheme and host of a server URL (`host:port` alone means http) and gives it one
/// spelling per server: scheme and host in lower case, no default port, the path ending in `/`
/// (`HTTP://LocalHost:80` is `http://localhost/`). Whatever is kept per server (a login, pins)
/// is keyed by that spelling, so it holds however the URL is typed.
pub fn parse_server_url(server: &str, insecure_http: bool) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidUrl { url: server.into(), reason: reason.into() };
    let with_scheme = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
    // The WHATWG parser lower-cases the scheme and host and drops a default port.
    let mut url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be https:// (or http:// to this machine)"));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(invalid("no host"));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a server URL has no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("a server URL carries no credentials"));
    }
    if url.scheme() == "http" && !insecure_http && !is_loopback(host) {
        return Err(invalid(
            "plain http:// is only for this machine (anyone on the path could swap the keys messages are sealed \
             to); use https://, or pass --insecure-http to accept the risk",
        ));
    }
    Ok(url)
}

/// `localhost`, `*.localhost` (RFC 6761), 127.0.0.0/8 and ::1.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// The rustls configuration of one client: the platform's roots, or only those of `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let fail = |reason: String| Error::Tls(format!("CA file {}: {reason}", path.display()));
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
        }
        None => {
            // Honours SSL_CERT_FILE / SSL_CERT_DIR; unreadable entries are skipped.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Error::Tls(
                    "no trusted root certificates on this system (install ca-certificates, or pass --ca-file)".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The rustls configuration of a client of a plain http:// server, which never uses it. reqwest
/// wants one all the same: it is built without a crypto provider of its own (ring is the
/// relay's; reqwest's own, aws-lc, is a long C build), so without this it would look for a
/// process-wide default and panic when there is none.
pub fn plain_http_config() -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_machine() {
        for ok in [
            "http://localhost:8000",
            "localhost:8000",
            "http://127.0.0.2:1",
            "http://[::1]:8000",
            "https://example.org",
        ] {
            assert!(parse_server_url(ok, false).is_ok(), "{ok}");
        }
        let refused = parse_server_url("http://example.org", false).unwrap_err().to_string();
        assert!(refused.contains("--insecure-http"), "{refused}");
        assert!(parse_server_url("http://10.0.0.1:8000", false).is_err());
        assert!(parse_server_url("http://localhost.example.org", false).is_err());
        assert!(parse_server_url("http://example.org", true).is_ok());
        assert!(parse_server_url("ftp://example.org", true).is_err());
        assert!(parse_server_url("https://user:pw@example.org", false).is_err());
    }

    #[test]
    fn one_spelling_per_server() {
        let same = |a: &str, b: &str| {
            assert_eq!(parse_server_url(a, true).unwrap().as_str(), b, "{a}");
        };
        same("http://localhost:8000", "http://localhost:8000/");
        same("http://localhost:8000/", "http://localhost:8000/");
        same("HTTP://LocalHost:8000", "http://localhost:8000/");
        same("localhost:8000", "http://localhost:8000/");
        same("http://localhost:80", "http://localhost/");
        same("https://Example.ORG:443/", "https://example.org/");
        same("https://example.org:8443", "https://example.org:8443/");
        same("https://example.org/relay", "https://example.org/relay/");
        same("https://example.org/relay/", "https://example.org/relay/");
        same("http://[::1]:8000", "http://[::1]:8000/");
        // Another host is another server, even when it is the same machine.
        assert_ne!(
            parse_server_url("http://localhost:8000", false).unwrap(),
            parse_server_url("http://127.0.0.1:8000", false).unwrap()
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("enigma-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = client_config(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let _ = std::fs::remove_file(&path);
        assert!(client_config(Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }
}
