//! rsyslog as the peer relay for S1: `imtcp` in, an in-memory (LinkedList) ruleset queue,
//! `omfwd` out over TCP, each line forwarded verbatim (`%rawmsg%`).
//!
//! The harness writes its own config with a private work directory and pid file and runs
//! `rsyslogd -n -f CONF -i PIDFILE` as its child on loopback ports; the system daemon and its
//! config are never touched (no `imuxsock`, so `/dev/log` is left alone). If `rsyslogd` is not
//! installed, [`ensure_installed`] runs `apt-get install -y rsyslog` once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use crate::relay::Proc;

/// Finds `rsyslogd` on the usual paths.
fn find() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd", "/usr/bin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The path of `rsyslogd`, installing the Debian package if it is missing.
pub async fn ensure_installed() -> Result<PathBuf> {
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("rsyslogd not found; running `apt-get install -y rsyslog`");
    let status = tokio::process::Command::new("apt-get")
        .args(["install", "-y", "rsyslog"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .await
        .context("running apt-get")?;
    match find() {
        Some(p) if status.success() => Ok(p),
        _ => bail!("`apt-get install -y rsyslog` failed ({status}); install rsyslog by hand"),
    }
}

/// The rsyslog config for one run.
pub fn config(work_dir: &Path, listen: SocketAddr, forward_to: SocketAddr) -> String {
    format!(
        r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp" maxSessions="1000")
template(name="sluiceBenchRaw" type="string" string="%rawmsg%\n")
ruleset(name="sluiceBench" queue.type="LinkedList" queue.size="100000"
        queue.dequeueBatchSize="1024") {{
  action(type="omfwd" target="{fip}" port="{fport}" protocol="tcp"
         template="sluiceBenchRaw" tcp_framing="traditional")
}}
input(type="imtcp" address="{lip}" port="{lport}" ruleset="sluiceBench")
"#,
        work = work_dir.display(),
        fip = forward_to.ip(),
        fport = forward_to.port(),
        lip = listen.ip(),
        lport = listen.port(),
    )
}

/// Starts rsyslogd in `dir` and waits until its TCP input accepts connections.
pub async fn start(
    exe: &Path,
    dir: &Path,
    listen: SocketAddr,
    forward_to: SocketAddr,
) -> Result<Proc> {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work)?;
    let conf = dir.join("rsyslog.conf");
    std::fs::write(&conf, config(&work, listen, forward_to))?;
    let pid_file = dir.join("rsyslog.pid");
    let conf_s = conf.to_string_lossy().into_owned();
    let pid_s = pid_file.to_string_lossy().into_owned();
    let mut proc = Proc::spawn(
        "rsyslogd",
        exe,
        &["-n", "-f", &conf_s, "-i", &pid_s],
        dir.join("rsyslog.log"),
    )?;
    let deadline = Instant::now() + crate::relay::READY_TIMEOUT;
    loop {
        if let Some(status) = proc.exited()? {
            bail!(
                "rsyslogd exited ({status}) at start-up:\n{}",
                proc.log_tail()
            );
        }
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(proc);
        }
        if Instant::now() >= deadline {
            let tail = proc.log_tail();
            let _ = proc.stop().await;
            bail!("rsyslogd did not listen on {listen} in time:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_private_to_the_run() {
        let listen: SocketAddr = "127.0.0.1:5514".parse().expect("addr");
        let out: SocketAddr = "127.0.0.1:6514".parse().expect("addr");
        let c = config(Path::new("/tmp/run/rsyslog-work"), listen, out);
        assert!(
            c.contains(r#"workDirectory="/tmp/run/rsyslog-work""#),
            "{c}"
        );
        assert!(c.contains(r#"address="127.0.0.1" port="5514""#), "{c}");
        assert!(
            c.contains(r#"target="127.0.0.1" port="6514" protocol="tcp""#),
            "{c}"
        );
        assert!(c.contains("%rawmsg%"), "lines must be forwarded verbatim");
        assert!(
            !c.contains("imuxsock") && !c.contains("/dev/log"),
            "never the system socket"
        );
    }
}
