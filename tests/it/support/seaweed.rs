//! A private SeaweedFS (`weed mini`) per test: a real S3 server that checks
//! SigV4 signatures, on free ports of 127.0.0.1, with its data, logs and
//! configuration in a temporary directory it owns.
//!
//! Two identities exist from the start: a read-write one (`AKTEST`) and a
//! read-only one (`AKRO`), so a test can try a bucket it may not write to.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports::{free_ports_with_grpc, GRPC_OFFSET};
use super::process::{kill_and_reap, send_signal, tail, wait_timeout};
use super::s3::S3;

/// Access key of the read-write identity.
pub const ACCESS_KEY: &str = "AKTEST";
/// Secret key of the read-write identity.
pub const SECRET_KEY: &str = "SKTEST-very-secret-0123456789";
/// Access key of the identity that may only read and list.
pub const RO_ACCESS_KEY: &str = "AKRO";
/// Secret key of the identity that may only read and list.
pub const RO_SECRET_KEY: &str = "SKRO-readonly-secret-0000";

/// The bucket holding the object that proves a (re)started server can read
/// what it stored. It is there in every server, next to the tests' buckets.
pub const PROBE_BUCKET: &str = "it-harness-probe";
/// The probe object's key.
const PROBE_KEY: &str = "probe";
/// The probe object's content.
const PROBE: &[u8] = b"written at the first start";

/// How long a start may take until S3 answers and reads back the probe.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGTERM may take before SIGKILL follows.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// The `weed` binary: `$WEED_BIN`, else `target/tools/bin/weed` in the
/// repository. Panics with the install command when it is missing.
pub fn weed_bin() -> PathBuf {
    let path = match std::env::var_os("WEED_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => super::repo_root().join("target/tools/bin/weed"),
    };
    if !path.is_file() {
        panic!(
            "SeaweedFS is not installed at `{}`: run `scripts/install-seaweedfs` \
             (or `scripts/test`, which runs it), or point WEED_BIN at a `weed` binary",
            path.display()
        );
    }
    path
}

/// The ports `weed mini` listens on; each also has a gRPC port at +10000.
#[derive(Clone, Copy, Debug)]
struct Ports {
    s3: u16,
    master: u16,
    volume: u16,
    filer: u16,
    admin: u16,
}

/// A running (or stopped) SeaweedFS server; dropping it kills the process and
/// deletes its data.
pub struct Seaweed {
    ports: Ports,
    child: Option<Child>,
    /// Whether the probe object exists (written at the first start).
    probe_written: bool,
    /// The HTTPS port and the CA that signed its certificate, when started
    /// with [`Seaweed::start_tls`].
    tls: Option<(u16, std::path::PathBuf)>,
    /// Deleted once `drop` has killed the process.
    dir: TempDir,
}

impl Seaweed {
    /// Starts a server on free ports and waits until S3 calls work and an
    /// object can be written and read back.
    pub fn start() -> Seaweed {
        let dir = tempfile::Builder::new()
            .prefix("it-seaweed-")
            .tempdir()
            .expect("a temporary directory for SeaweedFS");
        fs::create_dir_all(dir.path().join("data")).expect("SeaweedFS data directory");
        fs::create_dir_all(dir.path().join("log")).expect("SeaweedFS log directory");
        fs::write(dir.path().join("s3.json"), identities_json()).expect("SeaweedFS s3.json");
        let [s3, master, volume, filer, admin] =
            free_ports_with_grpc(5).try_into().expect("five ports");
        let mut weed = Seaweed {
            ports: Ports {
                s3,
                master,
                volume,
                filer,
                admin,
            },
            child: None,
            probe_written: false,
            dir,
            tls: None,
        };
        weed.spawn_and_wait();
        weed
    }

    /// Starts a server that also serves S3 over HTTPS, with a certificate for
    /// `127.0.0.1` signed by a CA of its own (made with the `openssl` command;
    /// rustls refuses a certificate that is its own CA).
    pub fn start_tls() -> Seaweed {
        let mut weed = Seaweed::start();
        weed.stop();
        let dir = weed.dir.path().to_path_buf();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("the `openssl` command");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=it-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("leaf.ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ]);
        weed.tls = Some((super::ports::free_port(), dir.join("ca.pem")));
        weed.start_again();
        weed
    }

    /// The HTTPS port and the CA file, for a server from [`Seaweed::start_tls`].
    pub fn tls(&self) -> Option<(u16, &Path)> {
        self.tls.as_ref().map(|(p, ca)| (*p, ca.as_path()))
    }

    /// The S3 host: always `127.0.0.1`.
    pub fn endpoint(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The S3 port.
    pub fn port(&self) -> u16 {
        self.ports.s3
    }

    /// The S3 base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.endpoint(), self.port())
    }

    /// Access key of the read-write identity.
    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }

    /// Secret key of the read-write identity.
    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }

    /// Access key of the identity allowed only `Read` and `List`.
    pub fn read_only_access_key(&self) -> &'static str {
        RO_ACCESS_KEY
    }

    /// Secret key of the identity allowed only `Read` and `List`.
    pub fn read_only_secret_key(&self) -> &'static str {
        RO_SECRET_KEY
    }

    /// The temporary directory holding data, logs and `s3.json`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client signing as the read-write identity.
    ///
    /// A new client each time: one kept across `stop`/`start_again` would
    /// reuse dead pooled connections.
    pub fn s3(&self) -> S3 {
        S3::new(&self.url(), ACCESS_KEY, SECRET_KEY)
    }

    /// A client signing as the read-only identity.
    pub fn s3_read_only(&self) -> S3 {
        S3::new(&self.url(), RO_ACCESS_KEY, RO_SECRET_KEY)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server with SIGTERM, waiting up to 15 s before SIGKILL.
    /// Data stays for [`Seaweed::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            if wait_timeout(&mut child, STOP_DEADLINE).is_none() {
                eprintln!("SeaweedFS did not stop within {STOP_DEADLINE:?} of SIGTERM: killing it");
                kill_and_reap(&mut child);
            }
            self.remove_grpc_sockets();
        }
    }

    /// Kills the server with SIGKILL (a crash). Data stays for
    /// [`Seaweed::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
            self.remove_grpc_sockets();
        }
    }

    /// Removes the `/tmp/seaweedfs-<component>-grpc-<port>.sock` files of the
    /// exited server: it puts them there whatever TMPDIR says and leaves them
    /// behind when killed, which would otherwise be one set per test.
    fn remove_grpc_sockets(&self) {
        let Ports {
            s3,
            master,
            volume,
            filer,
            admin,
        } = self.ports;
        for (component, port) in [
            ("s3", s3),
            ("master", master),
            ("volume", volume),
            ("filer", filer),
            ("admin", admin),
        ] {
            let grpc = port + GRPC_OFFSET;
            let _ = fs::remove_file(format!("/tmp/seaweedfs-{component}-grpc-{grpc}.sock"));
        }
    }

    /// Starts the server again after `stop` or `kill`, on the same ports and
    /// data directory, and waits until S3 calls work.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again called while SeaweedFS is running"
        );
        self.child = None;
        self.spawn_and_wait();
    }

    /// The last `lines` lines of the server's output and of its log file.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- weed output (last {lines} lines) ---\n{}\n--- weed log (last {lines} lines) ---\n{}",
            tail(&self.dir.path().join("weed.out"), lines),
            tail(&self.dir.path().join("log/weed.INFO"), lines),
        )
    }

    fn spawn_and_wait(&mut self) {
        let dir = self.dir.path();
        // Sockets left behind by a killed server would make the new one fail.
        for socket in ["filer.sock", "s3.sock"] {
            let _ = fs::remove_file(dir.join(socket));
        }
        // Appended to, so that the output of earlier runs stays visible.
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weed.out"))
            .expect("SeaweedFS output file");
        let err = out.try_clone().expect("SeaweedFS output file");
        let Ports {
            s3,
            master,
            volume,
            filer,
            admin,
        } = self.ports;
        let path = |name: &str| dir.join(name).display().to_string();
        let mut command = Command::new(weed_bin());
        command
            // `-logdir` is a global flag: after `mini` it would be ignored.
            .arg(format!("-logdir={}", path("log")))
            .arg("mini")
            .arg(format!("-dir={}", path("data")))
            // The default bind address is not loopback: both flags are needed.
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-s3.config={}", path("s3.json")))
            .args(["-webdav=false", "-admin.ui=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg("-master.telemetry=false")
            // Otherwise a stop waits for the volume server's grace period.
            .arg("-volume.preStopSeconds=0")
            // As S3 and MinIO do: a write to a missing bucket fails instead of
            // creating it, so tests see the error a real deployment gives.
            .arg("-s3.autoCreateBucket=false")
            .args(self.tls.iter().flat_map(|(port, _)| {
                [
                    format!("-s3.port.https={port}"),
                    format!("-s3.cert.file={}", path("leaf.pem")),
                    format!("-s3.key.file={}", path("leaf.key")),
                ]
            }))
            .arg(format!("-filer.localSocket={}", path("filer.sock")))
            .arg(format!("-s3.localSocket={}", path("s3.sock")))
            // Nothing from the developer's environment or home directory
            // (`~/.seaweedfs/*.toml`, `S3_BUCKET`, `WEED_*`) may change it.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", weed_bin().display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits for `/healthz` to answer 200, then for the probe object to be
    /// written and read back (first start) or read back (restart).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let healthz = format!("{}/healthz", self.url());
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let mut last_error = String::from("no attempt yet");
        let ready = wait_until_or_exit(self, start, || match agent.get(&healthz).call() {
            Ok(response) if response.status() == 200 => true,
            Ok(response) => {
                last_error = format!("status {}", response.status());
                false
            }
            Err(e) => {
                last_error = e.to_string();
                false
            }
        });
        if !ready {
            self.fail_start(&format!(
                "`{healthz}` never answered 200 (last: {last_error})"
            ));
        }

        // Answering is not enough: after a restart under load, reads of
        // existing objects fail with InternalError for seconds, until the
        // volume server has registered again. So a signed round trip through
        // the whole server must work, and after a restart the object written
        // at the first start must read back.
        let client = self.s3().with_call_timeout(Duration::from_secs(5));
        let first_start = !self.probe_written;
        let ready = wait_until_or_exit(self, start, || {
            let read_back = if first_start {
                write_probe(&client).and_then(|()| client.get_object(PROBE_BUCKET, PROBE_KEY))
            } else {
                client.get_object(PROBE_BUCKET, PROBE_KEY)
            };
            match read_back {
                Ok(content) if content == PROBE => true,
                Ok(content) => {
                    last_error = format!("read back {content:?}");
                    false
                }
                Err(e) => {
                    last_error = format!("{e:#}");
                    false
                }
            }
        });
        if !ready {
            self.fail_start(&format!(
                "S3 at {} never read back the probe object `{PROBE_BUCKET}/{PROBE_KEY}` \
                 (last: {last_error})",
                self.url()
            ));
        }
        self.probe_written = true;
    }

    fn fail_start(&mut self, why: &str) -> ! {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        self.kill();
        panic!(
            "SeaweedFS did not become ready: {why}\nprocess: {}\n{}",
            match status {
                Some(status) => format!("exited with {status}"),
                None => "still running (killed)".to_string(),
            },
            self.log_tail(40)
        );
    }

    /// Creates `bucket` as the read-write identity; panics on failure.
    pub fn create_bucket(&self, bucket: &str) {
        self.s3()
            .create_bucket(bucket)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Writes an object as the read-write identity; panics on failure.
    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) {
        self.s3()
            .put_object(bucket, key, data.to_vec(), &[])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Every key under `prefix`, recursively, in key order; panics on failure.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.s3()
            .list_keys(bucket, prefix)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The content of `bucket`/`key`; panics on failure.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.s3()
            .get_object(bucket, key)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The user metadata of `bucket`/`key`; panics on failure.
    pub fn stat_metadata(&self, bucket: &str, key: &str) -> HashMap<String, String> {
        self.s3()
            .stat_metadata(bucket, key)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Deletes `bucket`/`key`; panics on failure.
    pub fn delete_object(&self, bucket: &str, key: &str) {
        self.s3()
            .delete_object(bucket, key)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates the probe bucket if needed and writes the probe object.
fn write_probe(client: &S3) -> anyhow::Result<()> {
    if !client.bucket_exists(PROBE_BUCKET)? {
        client.create_bucket(PROBE_BUCKET)?;
    }
    client.put_object(PROBE_BUCKET, PROBE_KEY, PROBE.to_vec(), &[])
}

/// Polls `ready` until it holds (true), or the process exits or the start
/// deadline passes (false).
fn wait_until_or_exit(weed: &mut Seaweed, start: Instant, mut ready: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_millis(10);
    loop {
        if !weed.is_running() {
            return false;
        }
        if ready() {
            return true;
        }
        if start.elapsed() >= START_DEADLINE {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The `s3.json` holding both identities.
fn identities_json() -> String {
    serde_json::json!({
        "identities": [
            {
                "name": "test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]
            },
            {
                "name": "readonly",
                "credentials": [{"accessKey": RO_ACCESS_KEY, "secretKey": RO_SECRET_KEY}],
                "actions": ["Read", "List"]
            }
        ]
    })
    .to_string()
}
