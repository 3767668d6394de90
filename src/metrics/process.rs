//! The standard `process_*` metrics (the names the Prometheus client
//! libraries use), read from `/proc/self` at each scrape.
//!
//! The prometheus crate's own collector exports `process_cpu_seconds_total`
//! in whole seconds (an integer counter, tikv/rust-prometheus#451), which
//! makes `rate()` of a lightly loaded gateway a step function; this one
//! exports the kernel's 10 ms resolution.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

use crate::lock::lock;

pub struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    /// What `cpu` was last set from, so concurrent scrapes never add the
    /// same CPU time twice (a counter only goes up by increments).
    cpu_seen: Mutex<f64>,
    resident_memory: IntGauge,
    virtual_memory: IntGauge,
    start_time: Gauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
}

impl ProcessCollector {
    pub fn new() -> Result<ProcessCollector, prometheus::Error> {
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )?;
        let resident_memory = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let virtual_memory = IntGauge::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )?;
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = IntGauge::new(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")?;
        let descs = [
            cpu.desc(),
            resident_memory.desc(),
            virtual_memory.desc(),
            start_time.desc(),
            open_fds.desc(),
            max_fds.desc(),
            threads.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(ProcessCollector {
            descs,
            cpu,
            cpu_seen: Mutex::new(0.0),
            resident_memory,
            virtual_memory,
            start_time,
            open_fds,
            max_fds,
            threads,
        })
    }

    /// Reads `/proc/self`; a reading that fails leaves its metric as it was.
    fn update(&self) {
        let Ok(process) = procfs::process::Process::myself() else {
            return;
        };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = process.stat() {
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let mut seen = lock(&self.cpu_seen);
            if cpu > *seen {
                self.cpu.inc_by(cpu - *seen);
                *seen = cpu;
            }
            drop(seen);
            let page_size = procfs::page_size();
            self.resident_memory
                .set(i64::try_from(stat.rss.saturating_mul(page_size)).unwrap_or(i64::MAX));
            self.virtual_memory
                .set(i64::try_from(stat.vsize).unwrap_or(i64::MAX));
            self.threads.set(stat.num_threads);
            if let Ok(boot) = procfs::boot_time_secs() {
                self.start_time
                    .set(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        if let Ok(count) = process.fd_count() {
            self.open_fds.set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Ok(limits) = process.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                self.max_fds.set(i64::try_from(max).unwrap_or(i64::MAX));
            }
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        let mut families = Vec::with_capacity(7);
        families.extend(self.cpu.collect());
        families.extend(self.resident_memory.collect());
        families.extend(self.virtual_memory.collect());
        families.extend(self.start_time.collect());
        families.extend(self.open_fds.collect());
        families.extend(self.max_fds.collect());
        families.extend(self.threads.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_has_sub_second_resolution_and_only_grows() {
        let collector = ProcessCollector::new().unwrap();
        // Burn a little CPU so there is something to measure.
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        collector.update();
        let first = collector.cpu.get();
        assert!(first > 0.0, "{first}");
        collector.update();
        assert!(collector.cpu.get() >= first);
        assert!(collector.resident_memory.get() > 0);
        assert!(collector.start_time.get() > 1.7e9);
        assert!(collector.open_fds.get() > 0);
        assert!(collector.threads.get() > 0);
    }
}
