//! CPU time per event, for the benches whose work runs on pinned glommio executors
//! (`mesh_hop`, `link_hop`): wall-clock figures on a shared machine fall whenever another
//! process takes one of the CPUs, while the CPU time each executor's thread spends per event
//! (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`) is what the work costs that core, whatever
//! else runs. The rest of the process's CPU time is reported beside it (`getrusage(RUSAGE_SELF)`
//! less the CPU time of the thread that started and reports the meter, criterion's, which
//! spends seconds on its statistics): what no executor thread is charged for, such as
//! io_uring's kernel workers, shows there.
//!
//! A [`CpuMeter`] lives on criterion's thread; its [`CpuMeterTask`] runs on the executor it
//! reads, answering each request with that thread's CPU time.

use std::cell::Cell;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use trove::constants::SHARD_IO_MEMORY_BYTES;
use trove::host::affinity::allowed_cpus;

/// CPU time the calling thread has run, in user and kernel mode.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill in.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "every Linux thread has a CPU-time clock");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time the whole process has run (every thread, user and kernel mode).
pub fn process_cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for getrusage to fill in.
    let result = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(
        result, 0,
        "getrusage(RUSAGE_SELF) cannot fail with a valid pointer"
    );
    let of = |time: libc::timeval| {
        Duration::new(time.tv_sec as u64, 0) + Duration::from_micros(time.tv_usec as u64)
    };
    of(usage.ru_utime) + of(usage.ru_stime)
}

/// Reads, from criterion's thread, the CPU time of an executor's thread.
pub struct CpuMeter {
    requests: flume::Sender<()>,
    readings: flume::Receiver<Duration>,
}

/// The executor's end of a [`CpuMeter`]: a task that answers each request.
pub struct CpuMeterTask {
    requests: flume::Receiver<()>,
    readings: flume::Sender<Duration>,
}

impl CpuMeter {
    pub fn new() -> (CpuMeter, CpuMeterTask) {
        let (requests, requests_rx) = flume::unbounded();
        let (readings_tx, readings) = flume::unbounded();
        let task = CpuMeterTask {
            requests: requests_rx,
            readings: readings_tx,
        };
        (CpuMeter { requests, readings }, task)
    }

    pub fn read(&self) -> Duration {
        self.requests.send(()).expect("the executor is running");
        self.readings.recv().expect("the executor is running")
    }
}

impl CpuMeterTask {
    /// Spawns the task on the calling executor.
    pub fn spawn(self) {
        glommio::spawn_local(async move {
            while self.requests.recv_async().await.is_ok() {
                if self.readings.send(thread_cpu_time()).is_err() {
                    break;
                }
            }
        })
        .detach();
    }
}

/// The CPU time both executors of a bench (and the whole process) spend on the events it
/// moves.
pub struct HopCpu {
    /// Printed before each report: the bench's group, such as `mesh_hop`.
    group: &'static str,
    sides: [(&'static str, CpuMeter, Duration); 2],
    /// The process's CPU time, and the calling (criterion's) thread's, when counting began.
    process_started: Duration,
    caller_started: Duration,
    events: Cell<u64>,
}

impl HopCpu {
    /// Starts counting from now; `sides` names each executor.
    pub fn start(group: &'static str, sides: [(&'static str, CpuMeter); 2]) -> HopCpu {
        HopCpu {
            group,
            sides: sides.map(|(name, meter)| {
                let started = meter.read();
                (name, meter, started)
            }),
            process_started: process_cpu_time(),
            caller_started: thread_cpu_time(),
            events: Cell::new(0),
        }
    }

    pub fn add_events(&self, events: u64) {
        self.events.set(self.events.get() + events);
    }

    /// Events counted so far.
    pub fn events(&self) -> u64 {
        self.events.get()
    }

    /// Says what each side spent per event, and the process but the calling thread, unless
    /// the bench did not run (filtered out). Call it on the thread that started the meter.
    pub fn report(&self, bench: &str) {
        if self.events.get() == 0 {
            return;
        }
        let events = self.events.get() as f64;
        let per_event: Vec<f64> = self
            .sides
            .iter()
            .map(|(_, meter, started)| (meter.read() - *started).as_nanos() as f64 / events)
            .collect();
        let caller = thread_cpu_time() - self.caller_started;
        let process = (process_cpu_time() - self.process_started).saturating_sub(caller);
        let process = process.as_nanos() as f64 / events;
        let busiest = per_event.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "{}/{bench}: CPU per event: {} {:.1} ns, {} {:.1} ns (the process but criterion's \
             thread {:.1} ns); the busier side could carry {:.2} M events/s",
            self.group,
            self.sides[0].0,
            per_event[0],
            self.sides[1].0,
            per_event[1],
            process,
            1e3 / busiest
        );
    }
}

/// The two CPUs a hop runs between: the first two of the affinity mask (both the one CPU of
/// a one-CPU machine, which `group`'s bench then says).
pub fn hop_cpus(group: &str) -> [usize; 2] {
    let cpus = allowed_cpus();
    match cpus.as_slice() {
        [] => {
            eprintln!("{group}: no CPU to run on: the affinity mask is empty");
            std::process::exit(1);
        }
        [only] => {
            eprintln!(
                "{group}: one CPU ({only}) in the affinity mask: both executors share it, so \
                 this measures a hop between two executors taking turns on one core"
            );
            [*only, *only]
        }
        [first, second, ..] => {
            eprintln!("{group}: executors pinned to CPUs {first} and {second}");
            [*first, *second]
        }
    }
}

/// An executor pinned to `cpu`, with a shard's io_uring memory.
pub fn executor(cpu: usize, name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(name)
        .io_memory(SHARD_IO_MEMORY_BYTES)
}
