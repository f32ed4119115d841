//! A real S3-compatible server for tests: `moto` (PyPI, installed by
//! `scripts/install-deps.sh`) run as a separate process on a free loopback port, killed when
//! the fixture is dropped. Like Bazel, a missing moto FAILS tests on CI (`CI=true`) and
//! skips them elsewhere.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python that runs moto: `$BAZEL_DIFF_TEST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("BAZEL_DIFF_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

fn moto_installed() -> bool {
    Command::new(python())
        .args(["-c", "import moto.server, flask, werkzeug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// moto does not check signatures, but it does check who owns an object: requests name the
/// tests' access key so they may overwrite and delete what the tool uploaded.
const AUTH: &str = "Authorization: AWS4-HMAC-SHA256 \
    Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// A running moto server. Dropping it kills the process.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

/// Starts a moto server, or returns `None` (skip) when moto is not installed and this is
/// not CI; on CI a missing moto panics. Use as `let Some(s3) = require_moto() else { return };`.
pub fn require_moto() -> Option<S3Server> {
    if !moto_installed() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but moto is not installed (`python3 -m pip install 'moto[server]'`, \
                 done by scripts/install-deps.sh); tests that need an S3 server must not be \
                 skipped on CI"
            );
        }
        eprintln!("note: skipping this test: moto is not installed (run scripts/install-deps.sh)");
        return None;
    }
    Some(S3Server::start())
}

impl S3Server {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let mut server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.request("GET", "/").is_none() {
            assert!(
                server.child.try_wait().ok().flatten().is_none(),
                "moto exited before answering"
            );
            assert!(Instant::now() < deadline, "moto did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a tool needs to reach this server (fixed test credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_for(&self.endpoint())
    }

    /// [`S3Server::env`] with another endpoint (a proxy in front of the server).
    pub fn env_for(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", endpoint.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// Creates `bucket` (moto checks no signatures) and returns `s3://<bucket>`.
    pub fn bucket(&self, bucket: &str) -> String {
        let status = self
            .request("PUT", &format!("/{bucket}"))
            .expect("moto answers");
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket}: {status}"
        );
        format!("s3://{bucket}")
    }

    /// Replaces (or creates) an object behind the tool's back: `key` is the object's full
    /// path in `bucket`.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let status = self
            .request_with_body("PUT", &format!("/{bucket}/{key}"), body)
            .expect("moto answers");
        assert!(status.contains(" 200"), "PUT {bucket}/{key}: {status}");
    }

    /// Deletes an object behind the tool's back.
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let status = self
            .request("DELETE", &format!("/{bucket}/{key}"))
            .expect("moto answers");
        assert!(status.contains(" 204"), "DELETE {bucket}/{key}: {status}");
    }

    /// Kills the server process now (a crash, as the tool sees it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn request(&self, method: &str, path: &str) -> Option<String> {
        self.request_with_body(method, path, &[])
    }

    /// One plain HTTP request; the status line, `None` if the server is not reachable.
    fn request_with_body(&self, method: &str, path: &str, body: &[u8]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n{AUTH}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .ok()?;
        stream.write_all(body).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.lines().next().map(str::to_owned)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
