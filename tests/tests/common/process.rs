//! A real `ledger serve` process (the `ledger-e2e` binary): spawned with an
//! exact environment, waited for until it prints its address, stopped with
//! SIGTERM. Its stdout and stderr are collected for assertions.
//!
//! Include with `#[path = "common/process.rs"] mod process;`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest a process may take to start or to stop.
pub const PROCESS_WAIT_MAX: Duration = Duration::from_secs(60);

/// `ledger-e2e <args>` with exactly `env` (nothing inherited).
pub fn ledger_cmd(args: &[&str], env: &HashMap<String, String>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledger-e2e"));
    cmd.args(args).env_clear().envs(env);
    cmd
}

/// A port nobody listens on now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads a pipe to its end on a thread; with `lines`, also forwards each
/// line as it arrives.
fn spawn_reader(
    mut r: impl Read + Send + 'static,
    lines: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = String::new();
        match lines {
            Some(tx) => {
                for line in BufReader::new(r).lines() {
                    let line = line.unwrap_or_default();
                    all.push_str(&line);
                    all.push('\n');
                    let _ = tx.send(line);
                }
            }
            None => {
                let mut bytes = Vec::new();
                let _ = r.read_to_end(&mut bytes);
                all = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        all
    })
}

/// What a stopped process left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running `ledger serve`.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl ServeProcess {
    /// Starts `ledger serve` on `127.0.0.1:<port>` in `cwd` and returns once
    /// it printed `ledger listening on`. Panics with its output if it does
    /// not within [`PROCESS_WAIT_MAX`].
    pub async fn spawn(env: &HashMap<String, String>, port: u16, cwd: &Path) -> ServeProcess {
        let mut env = env.clone();
        env.insert("LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
        let mut child = ledger_cmd(&["serve"], &env)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ledger serve");
        let (tx, rx) = mpsc::channel();
        let out = spawn_reader(child.stdout.take().unwrap(), Some(tx));
        let err = spawn_reader(child.stderr.take().unwrap(), None);
        let started = tokio::task::spawn_blocking(move || {
            loop {
                match rx.recv_timeout(PROCESS_WAIT_MAX) {
                    Ok(line) if line.contains("ledger listening on") => return Ok(line),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap();
        if started.is_err() {
            let _ = child.kill();
            panic!(
                "ledger serve did not start:\n{}\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        ServeProcess {
            child,
            out: Some(out),
            err: Some(err),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGTERM, then waits (at most [`PROCESS_WAIT_MAX`]) for the exit.
    pub async fn stop(mut self) -> Stopped {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let mut child = self.child;
        let waited = tokio::time::timeout(
            PROCESS_WAIT_MAX,
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await;
        let Ok(status) = waited else {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("ledger serve did not stop within {PROCESS_WAIT_MAX:?} of SIGTERM");
        };
        Stopped {
            status: status.unwrap().unwrap(),
            stdout: self.out.take().unwrap().join().unwrap(),
            stderr: self.err.take().unwrap().join().unwrap(),
        }
    }
}
