//! The process harness the end-to-end tests and the load generator share: start a
//! `master` or `slave` binary, wait for the `listening on http://ADDR` line it prints
//! once it serves (SPEC §9), keep draining its stdout, signal it, read its memory from
//! `/proc`, and never leave it behind (killed on drop).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Pacing of the exit poll after a signal: not a guess at timing, just politeness.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A running child that printed `listening on http://ADDR`.
pub struct Process {
    child: Child,
    /// Its base URL, from the `listening on` line.
    pub url: String,
    pub name: String,
    /// Time from spawn to the `listening on` line.
    pub started_in: Duration,
}

impl Process {
    /// Spawns `command` (its stdout is taken over here; stdin is closed) and waits up to
    /// `timeout` for its `listening on` line. `Err` says why it did not come up.
    pub fn spawn(name: &str, mut command: Command, timeout: Duration) -> Result<Process, String> {
        let started = Instant::now();
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn().map_err(|error| format!("cannot start {name}: {error}"))?;
        let stdout = child.stdout.take().ok_or_else(|| format!("{name}: no stdout"))?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            // Keep draining after the line we want, so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ")
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(url.trim().to_owned());
                }
            }
        });
        match receiver.recv_timeout(timeout) {
            Ok(url) => Ok(Process { child, url, name: name.to_owned(), started_in: started.elapsed() }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!("{name} never printed its `listening on` line (exit: {status:?})"))
            }
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGTERM, or SIGSTOP to freeze it like a partitioned host).
    pub fn signal(&self, signal: i32) -> Result<(), String> {
        let pid = i32::try_from(self.child.id()).map_err(|_| format!("{}: pid out of range", self.name))?;
        // SAFETY: signals our own child, whose pid cannot be reused before we wait on it.
        let sent = unsafe { libc::kill(pid, signal) };
        if sent == 0 { Ok(()) } else { Err(format!("could not signal {}", self.name)) }
    }

    /// SIGTERM, then waits up to `deadline` for the exit status; `Err` if it is still
    /// running then (the caller decides whether to kill it).
    pub fn terminate(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        self.signal(libc::SIGTERM)?;
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if started.elapsed() < deadline => std::thread::sleep(EXIT_POLL),
                Ok(None) => return Err(format!("{} did not exit within {deadline:?} of SIGTERM", self.name)),
                Err(error) => return Err(format!("cannot wait for {}: {error}", self.name)),
            }
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Peak resident set size so far (`VmHWM`), in MiB; `None` once it has exited.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.status_mb("VmHWM:")
    }

    /// Resident set size now (`VmRSS`), in MiB; `None` once it has exited.
    pub fn rss_mb(&self) -> Option<f64> {
        self.status_mb("VmRSS:")
    }

    fn status_mb(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status_kib(&status, field).map(|kib| kib as f64 / 1024.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `field` (`VmHWM:`, `VmRSS:`) of a `/proc/<pid>/status` text, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_vmhwm() {
        let status = "Name:\tmaster\nVmPeak:\t  900 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib("Name:\tzombie\n", "VmHWM:"), None);
    }

    #[test]
    fn a_child_that_never_listens_is_reported_and_reaped() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo starting; exit 3"]);
        let error = Process::spawn("sh", command, Duration::from_secs(5)).err().expect("no listening line");
        assert!(error.contains("never printed") && error.contains("exit"), "{error}");
    }

    #[test]
    fn the_listening_line_gives_the_url_and_sigterm_stops_it() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'listening on http://127.0.0.1:1'; exec sleep 30"]);
        let mut process = Process::spawn("sh", command, Duration::from_secs(5)).expect("listening");
        assert_eq!(process.url, "http://127.0.0.1:1");
        assert!(process.peak_rss_mb().is_some());
        let status = process.terminate(Duration::from_secs(5)).expect("exits on SIGTERM");
        assert!(!status.success());
        assert!(process.has_exited());
    }
}
