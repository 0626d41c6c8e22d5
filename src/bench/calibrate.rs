//! The physical limits a benchmark is measured against, taken in the same run on the same
//! CPUs: the round trip of a small message over loopback TCP between two plain threads, and
//! the one-way byte rate of a stream of large writes.
//!
//! No engine, no event loop, no framing: blocking std sockets with TCP_NODELAY, one thread
//! pinned to the client CPU and one to the server CPU (as the load generator and the node
//! are), so a result can say "trove's p99 is 3.1 loopback round trips" and "its byte rate is
//! 4% of what loopback carries". Runs on two threads of its own, started and joined here;
//! the calling thread only waits.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::generator::new_histogram;
use crate::bench::report::Calibration;
use crate::constants::{
    CALIBRATION_IO_WAIT_MS_MAX, CALIBRATION_MS_MAX, CALIBRATION_PING_BYTES,
    CALIBRATION_STREAM_WRITE_BYTES,
};
use crate::host::affinity::allowed_cpus;

/// Round trips the calibration makes before it records any (wakes the CPUs, warms caches):
/// a parameter of the measurement, not a limit.
const CALIBRATION_WARMUP_ROUND_TRIPS: u32 = 1_000;

/// Measures loopback round trips for `duration`, then the one-way byte rate for `duration`,
/// with the client thread on `client_cpu` and the server thread on `server_cpu` (either may
/// be left unpinned).
pub fn calibrate(
    client_cpu: Option<usize>,
    server_cpu: Option<usize>,
    duration: Duration,
) -> Result<Calibration, String> {
    if duration.is_zero() || duration > Duration::from_millis(CALIBRATION_MS_MAX) {
        return Err(format!(
            "a calibration must run for more than 0 ms and at most {CALIBRATION_MS_MAX} ms, \
             not {} ms",
            duration.as_millis()
        ));
    }
    let allowed = allowed_cpus();
    for cpu in [client_cpu, server_cpu].into_iter().flatten() {
        if !allowed.contains(&cpu) {
            return Err(format!(
                "the calibration cannot run on CPU {cpu}: this process may use only CPUs \
                 {allowed:?}"
            ));
        }
    }
    let (loopback_rtt_ns, ()) = run_pair(
        client_cpu,
        server_cpu,
        |client| ping(client, duration),
        echo,
    )?;
    let (stream_start, (bytes, stream_end)) = run_pair(
        client_cpu,
        server_cpu,
        |client| pour(client, duration),
        drain,
    )?;
    let seconds = stream_end.duration_since(stream_start).as_secs_f64();
    let mut cpus: Vec<usize> = [client_cpu, server_cpu].into_iter().flatten().collect();
    cpus.dedup();
    Ok(Calibration {
        loopback_rtt_ns,
        loopback_bytes_per_s: bytes as f64 / seconds,
        cpus,
    })
}

/// Connects a loopback pair of sockets and runs `client` and `server` on them, each on a
/// thread of its own pinned to its CPU (the caller's affinity is left alone); returns both
/// results once both have finished.
fn run_pair<C: Send, S: Send>(
    client_cpu: Option<usize>,
    server_cpu: Option<usize>,
    client: impl FnOnce(&mut TcpStream) -> io::Result<C> + Send,
    server: impl FnOnce(&mut TcpStream) -> io::Result<S> + Send,
) -> Result<(C, S), String> {
    let (client_stream, server_stream) =
        loopback_pair().map_err(|error| format!("cannot open a loopback connection: {error}"))?;
    std::thread::scope(|scope| {
        let server = scope.spawn(move || on_cpu(server_cpu, "server", server_stream, server));
        let client = scope.spawn(move || on_cpu(client_cpu, "client", client_stream, client));
        let client = joined("client", client.join());
        let server = joined("server", server.join());
        Ok((client?, server?))
    })
}

fn joined<T>(role: &str, result: std::thread::Result<Result<T, String>>) -> Result<T, String> {
    result.map_err(|_| format!("the calibration's {role} thread panicked"))?
}

/// Connected on the calling thread, so neither side can wait forever for the other to show up.
fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    let wait = Some(Duration::from_millis(CALIBRATION_IO_WAIT_MS_MAX));
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(wait)?;
        stream.set_write_timeout(wait)?;
    }
    Ok((client, server))
}

/// Pins the current thread to `cpu` and runs `work` on `stream`. The stream is closed when
/// `work` is done (or fails), which tells the other side to stop.
fn on_cpu<T>(
    cpu: Option<usize>,
    role: &str,
    mut stream: TcpStream,
    work: impl FnOnce(&mut TcpStream) -> io::Result<T>,
) -> Result<T, String> {
    if let Some(cpu) = cpu {
        if !crate::host::affinity::pin_current_thread(cpu) {
            return Err(format!(
                "cannot pin the calibration's {role} thread to CPU {cpu}"
            ));
        }
    }
    work(&mut stream).map_err(|error| format!("loopback calibration ({role}): {error}"))
}

/// The client of the ping-pong: round trips of one small message, timed one by one.
fn ping(stream: &mut TcpStream, duration: Duration) -> io::Result<Histogram<u64>> {
    let mut message = [0x5au8; CALIBRATION_PING_BYTES];
    for _ in 0..CALIBRATION_WARMUP_ROUND_TRIPS {
        round_trip(stream, &mut message)?;
    }
    let mut round_trips_ns = new_histogram();
    let end = Instant::now() + duration;
    loop {
        let start = Instant::now();
        if start >= end {
            return Ok(round_trips_ns);
        }
        round_trip(stream, &mut message)?;
        round_trips_ns.saturating_record((start.elapsed().as_nanos() as u64).max(1));
    }
}

fn round_trip(stream: &mut TcpStream, message: &mut [u8]) -> io::Result<()> {
    stream.write_all(message)?;
    stream.read_exact(message)
}

/// The server of the ping-pong: sends every message back until the client hangs up.
fn echo(stream: &mut TcpStream) -> io::Result<()> {
    let mut message = [0u8; CALIBRATION_PING_BYTES];
    loop {
        match stream.read_exact(&mut message) {
            Ok(()) => stream.write_all(&message)?,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

/// The sender of the stream: large writes for `duration`, then end of stream. Returns when it
/// started.
fn pour(stream: &mut TcpStream, duration: Duration) -> io::Result<Instant> {
    let chunk = vec![0xa5u8; CALIBRATION_STREAM_WRITE_BYTES];
    let start = Instant::now();
    while start.elapsed() < duration {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(start)
}

/// The receiver of the stream: reads until the end and returns the bytes and when it ended.
fn drain(stream: &mut TcpStream) -> io::Result<(u64, Instant)> {
    let mut buffer = vec![0u8; CALIBRATION_STREAM_WRITE_BYTES];
    let mut bytes = 0u64;
    loop {
        match stream.read(&mut buffer)? {
            0 => return Ok((bytes, Instant::now())),
            read => bytes += read as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_outside_the_limits_are_refused() {
        let error = calibrate(None, None, Duration::ZERO).unwrap_err();
        assert!(error.contains("more than 0 ms"), "{error}");
        let error =
            calibrate(None, None, Duration::from_millis(CALIBRATION_MS_MAX + 1)).unwrap_err();
        assert!(error.contains("at most"), "{error}");
    }

    #[test]
    fn cpus_this_process_may_not_use_are_refused() {
        let beyond = allowed_cpus().last().copied().unwrap_or(0) + 1;
        let error = calibrate(Some(beyond), None, Duration::from_millis(10)).unwrap_err();
        assert!(error.contains(&format!("CPU {beyond}")), "{error}");
    }
}
