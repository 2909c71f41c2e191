//! The `unix` source: a Unix stream socket whose connections carry frames, exactly as the `tcp`
//! source's do ([`super::framing`], [`super::stream`]).
//!
//! The socket file:
//! - is created with `mode` (default `0660`; set right after `bind`, so for that instant the
//!   process umask applies — put the file in a directory only its users can reach if that
//!   matters);
//! - replaces a **stale** file left by a relay that died: a socket file nobody listens on is
//!   removed before binding. A socket somebody listens on, or a path that is not a socket, is an
//!   error: the relay never deletes what is not its own;
//! - is removed on shutdown, unless another file has taken its place meanwhile.
//!
//! Events carry no peer address (Unix peers have none); `/stats` shows the peer's pid and uid.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::framing::Framing;
use super::stream::{self, Peer, StreamListener, StreamOptions, defaults};
use super::{AckPoint, RunningSource, SourceContext};
use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixSourceConfig {
    pub path: PathBuf,
    /// Permissions of the socket file: `0o660` (a TOML octal integer) or `"0660"`.
    #[serde(default = "default_mode", deserialize_with = "file_mode")]
    pub mode: u32,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: ByteSize,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    #[serde(default = "defaults::partial_frame_timeout")]
    pub partial_frame_timeout: HumanDuration,
    /// `durable`: read nothing more until what the last read held is synced to the disk
    /// queues (the default when a sink's queue is on disk); `received`: don't wait.
    #[serde(default)]
    pub ack: Option<AckPoint>,
}

fn default_mode() -> u32 {
    0o660
}

fn file_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a file mode such as 0o660 or \"0660\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    E::custom(format!(
                        "expected a file mode from 0o000 to 0o777, found {v:#o}"
                    ))
                })
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            let digits = v.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    E::custom(format!(
                        "expected an octal file mode such as \"0660\", found {v:?}"
                    ))
                })
        }
    }
    deserializer.deserialize_any(V)
}

impl UnixSourceConfig {
    pub fn options(&self) -> StreamOptions {
        StreamOptions {
            framing: self.framing,
            max_frame_bytes: self.max_frame_bytes,
            strip_prefix: self.strip_prefix.clone(),
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            partial_frame_timeout: self.partial_frame_timeout,
            ack: self.ack,
        }
    }

    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = self.options().validate(prefix, locator);
        if self.path.as_os_str().is_empty() {
            errors.push(locator.error(
                &format!("{prefix}.path"),
                "expected a socket path, found an empty string",
            ));
        }
        errors
    }
}

impl StreamListener for UnixListener {
    type Stream = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let label = match stream.peer_cred() {
            Ok(cred) => match cred.pid() {
                Some(pid) => format!("pid {pid} uid {}", cred.uid()),
                None => format!("uid {}", cred.uid()),
            },
            Err(_) => "unix".to_string(),
        };
        Ok((stream, Peer { label, addr: None }))
    }
}

/// Removes `path` if it is a socket file nobody listens on; fails on anything else that exists.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).context("cannot inspect the socket path"),
    };
    if !metadata.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("another process is listening on {}", path.display()),
        Err(_) => {
            warn!(path = %path.display(), "Replacing a stale socket file.");
            std::fs::remove_file(path).context("cannot remove the stale socket file")
        }
    }
}

pub async fn start(
    config: UnixSourceConfig,
    context: SourceContext,
) -> anyhow::Result<RunningSource> {
    let path = config.path.clone();
    let where_ = || {
        format!(
            "sources.{}: cannot listen on {}",
            context.name,
            path.display()
        )
    };
    clear_stale(&path).with_context(where_)?;
    let listener = UnixListener::bind(&path).with_context(where_)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.mode))
        .with_context(where_)?;
    let inode = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
    info!(source = %context.name, path = %path.display(), mode = %format!("{:o}", config.mode), "Unix source listening.");
    let options = config.options();
    let task = tokio::spawn(async move {
        stream::serve(listener, options, context).await;
        let ours = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        if ours.is_some() && ours == inode {
            let _ = std::fs::remove_file(&path);
        }
    });
    Ok(RunningSource {
        local_addr: None,
        task,
    })
}
