//! Starts the real `switchyard` binary on a generated config and waits until it is ready.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running gateway; killed when dropped.
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Gateway {
    /// Asks the gateway to shut down (SIGTERM) and waits until it has
    /// exited, so what it writes at exit (a PGO profile) is on disk.
    pub async fn stop(&mut self) -> Result<(), String> {
        let Some(pid) = self.child.id() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed"));
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("the gateway exited with {status}")),
            Ok(Err(e)) => Err(format!("cannot wait for the gateway: {e}")),
            Err(_) => Err("the gateway did not exit within 30 s of SIGTERM".to_owned()),
        }
    }

    /// Writes `config` (which must listen on `port`) under `target/harness/`,
    /// starts the binary (`RUST_LOG=info`) and waits for `/readyz`.
    pub async fn start(
        root: &Path,
        binary: &Path,
        name: &str,
        port: u16,
        config: &str,
    ) -> Result<Self, String> {
        Self::start_logging(root, binary, name, port, config, "info").await
    }

    /// [`Gateway::start`] with `RUST_LOG` set to `log_level`.
    pub async fn start_logging(
        root: &Path,
        binary: &Path,
        name: &str,
        port: u16,
        config: &str,
        log_level: &str,
    ) -> Result<Self, String> {
        let dir = root.join("target").join("harness");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).map_err(|e| format!("cannot write config: {e}"))?;
        let log = dir.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("cannot create log: {e}"))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| format!("cannot clone log: {e}"))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let gateway = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(response) = client.get(format!("{}/readyz", gateway.base)).send().await
                && response.status().is_success()
            {
                return Ok(gateway);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the gateway did not become ready within 30 s; see {}",
            gateway.log.display()
        ))
    }
}
