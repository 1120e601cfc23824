//! `walrep bench-floor`: the physical floor of moving `--bytes` from one
//! process to another's disk on this machine, what a resync of that many
//! bytes cannot beat: (a) copying them over a loopback TCP socket, and (b)
//! writing them durably to a file in `--dir` (1 MiB writes, one fdatasync
//! at the end). The floor is the slower of the two
//! (`benches/resync-wiped-standby.sh` divides its resync time by it).

use super::{emit_json, r3};
use crate::error::DaemonError;
use clap::Args;
use serde::Serialize;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

/// Bytes per write, as the snapshot transfer's default chunk.
const CHUNK: usize = 1 << 20;

#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Bytes to move.
    #[arg(long)]
    pub bytes: u64,
    /// Folder on the disk to measure (the nodes' disk); a scratch file is
    /// written there and removed.
    #[arg(long)]
    pub dir: PathBuf,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct FloorResult {
    bytes: u64,
    tcp_seconds: f64,
    disk_seconds: f64,
    floor_seconds: f64,
}

/// Sends `bytes` from this thread to a reader thread over 127.0.0.1.
fn loopback_copy(bytes: u64) -> std::io::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n as u64,
            }
        }
    });
    let buf = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(addr)?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        conn.write_all(&buf[..n])?;
        sent += n as u64;
    }
    drop(conn);
    let got = reader
        .join()
        .map_err(|_| std::io::Error::other("the reader panicked"))??;
    if got != bytes {
        return Err(std::io::Error::other(format!("received {got} of {bytes}")));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Writes `bytes` into a new file in `dir` and fdatasyncs it.
fn durable_write(dir: &std::path::Path, bytes: u64) -> std::io::Result<f64> {
    let path = dir.join("bench-floor.tmp");
    let buf = vec![0xa5u8; CHUNK];
    let started = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(CHUNK as u64) as usize;
        file.write_all(&buf[..n])?;
        written += n as u64;
    }
    file.sync_data()?;
    let took = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(took)
}

pub async fn run(a: FloorArgs) -> Result<(), DaemonError> {
    let (bytes, dir) = (a.bytes, a.dir.clone());
    let (tcp, disk) = tokio::task::spawn_blocking(move || {
        let tcp = loopback_copy(bytes).map_err(|e| DaemonError::io("copying over loopback", e))?;
        let disk = durable_write(&dir, bytes)
            .map_err(|e| DaemonError::io(format!("writing to {}", dir.display()), e))?;
        Ok::<_, DaemonError>((tcp, disk))
    })
    .await
    .map_err(|e| DaemonError::Failed(format!("the measurement panicked: {e}")))??;
    let result = FloorResult {
        bytes,
        tcp_seconds: r3(tcp),
        disk_seconds: r3(disk),
        floor_seconds: r3(tcp.max(disk)),
    };
    println!(
        "{} bytes: loopback TCP {:.3} s, durable write {:.3} s, floor {:.3} s",
        bytes, result.tcp_seconds, result.disk_seconds, result.floor_seconds
    );
    emit_json(a.json, &result);
    Ok(())
}
