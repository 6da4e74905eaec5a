//! A throwaway certificate authority and a server certificate it signed for 127.0.0.1 (openssl
//! CLI), for a registry behind a private CA: trusted by nothing on this machine until a client
//! is pointed at [`TestCa::ca_path`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::run;
use crate::error::{IoContext, Result};

pub struct TestCa {
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestCa {
    /// A CA (P-256, a day long) and a server certificate for `IP:127.0.0.1` signed by it.
    pub fn generate() -> Result<TestCa> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-ca-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let d = dir.path();
        let ext = d.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .ctx(|| format!("writing {}", ext.display()))?;
        let p = |name: &str| d.join(name).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "1",
                "-subj",
                "/CN=deployctl test CA",
            ])
            .args(ec)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .args(["-keyout", &p("ca.key"), "-out", &p("ca.pem")]))?;
        run(Command::new("openssl")
            .args(["req", "-subj", "/CN=127.0.0.1"])
            .args(ec)
            .args(["-keyout", &p("server.key"), "-out", &p("server.csr")]))?;
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-extfile",
            &p("server.ext"),
            "-out",
            &p("server.pem"),
        ]))?;
        Ok(TestCa { dir })
    }

    /// The CA's certificate (PEM): what `SSL_CERT_FILE` points at to trust the server.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate and key (PEM files), for `docker-registry`'s `http.tls`.
    pub fn server_cert_and_key(&self) -> (PathBuf, PathBuf) {
        let d: &Path = self.dir.path();
        (d.join("server.pem"), d.join("server.key"))
    }
}
