//! Certificates made with the `openssl` command line, as the README shows
//! a user making them: a CA, a server certificate for 127.0.0.1 and
//! localhost, client certificates (for the TLS and mTLS tests).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::grpc::grpcurl::output_text;

/// Certificates under one directory: `<name>.pem`, `<name>.key`.
pub struct Pki {
    dir: PathBuf,
}

/// openssl's extensions of a client certificate (`-extfile`).
pub const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";

impl Pki {
    pub fn new(dir: PathBuf) -> Pki {
        std::fs::create_dir_all(&dir).expect("pki dir");
        Pki { dir }
    }

    /// The path of `name` in the directory, as text for a command line.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            output_text(&out)
        );
    }

    /// A self-signed CA: `<name>.pem`, `<name>.key`.
    pub fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A certificate `<name>.pem` (key `<name>.key`) for subject CN `cn`,
    /// signed by `ca`, with extensions `ext` (openssl's syntax).
    pub fn leaf(&self, name: &str, ca: &str, cn: &str, ext: &str) {
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).expect("ext file");
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// The usual certificates: `ca`, `server` (127.0.0.1, localhost),
    /// `alice` (client, CN=alice, SAN spiffe://test/alice) under `ca`;
    /// `other-ca` and `mallory` (client, CN=mallory) under it.
    pub fn standard(dir: PathBuf) -> Pki {
        let pki = Pki::new(dir);
        pki.ca("ca");
        pki.leaf(
            "server",
            "ca",
            "localhost",
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf(
            "alice",
            "ca",
            "alice",
            "basicConstraints=CA:FALSE\nsubjectAltName=URI:spiffe://test/alice\nextendedKeyUsage=clientAuth\n",
        );
        pki.ca("other-ca");
        pki.leaf("mallory", "other-ca", "mallory", CLIENT_EXT);
        pki
    }

    /// grpcurl's flags for TLS with `ca`, and the client certificate
    /// `client` (`<client>.pem`, `<client>.key`) when given.
    pub fn grpcurl_flags(&self, ca: &str, client: Option<&str>) -> Vec<String> {
        let mut flags = vec!["-cacert".to_string(), self.path(&format!("{ca}.pem"))];
        if let Some(c) = client {
            flags.extend([
                "-cert".to_string(),
                self.path(&format!("{c}.pem")),
                "-key".to_string(),
                self.path(&format!("{c}.key")),
            ]);
        }
        flags
    }
}
