//! Child processes that cannot outlive the test: each one runs in its own process group, is killed
//! with that group on drop, and gets SIGKILL from the kernel if the test process dies first
//! (`PR_SET_PDEATHSIG`), e.g. when a test runner is killed on timeout.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// How long a component gets to exit after SIGTERM before its group is killed.
const GRACE: Duration = Duration::from_secs(3);

pub struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, log)
    }

    /// Starts a prepared command (arguments, environment) the same way: its output goes to
    /// `log`, and it cannot outlive the test process.
    pub fn spawn_command(name: &'static str, mut command: Command, log: PathBuf) -> Result<Self> {
        let program = PathBuf::from(command.get_program());
        let out = File::create(&log).context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .context(|| format!("duplicating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls,
        // without allocating.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl; then no signal would ever come.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(command)
            .context(|| format!("starting {}", program.display()))?;
        Ok(Self { name, child, log })
    }

    /// Kills the process group at once, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: a plain syscall on the group this process leads.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGTERM to the group, SIGKILL after the grace period.
    fn terminate(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls on the group this process leads.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                unsafe { libc::kill(-group, libc::SIGKILL) };
                let _ = self.child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with the end of the log if the process has exited: a component that died while the
    /// control plane was being waited for explains itself there.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self
            .child
            .try_wait()
            .context(|| format!("checking on {}", self.name))?
        {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                component: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                tail: self.log_tail(),
            }),
        }
    }

    pub fn not_ready(&self, waited: Duration) -> Error {
        Error::NotReady {
            component: self.name,
            seconds: waited.as_secs(),
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
        // The log lives in a directory that is removed with the control plane: a failing test is
        // the only moment anyone can still read it, shutdown lines included. (`eprintln!` is
        // what the test harness captures and shows with the failure.)
        if thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The parent-death signal fires when the *thread* that forked the child exits, not the process.
/// Test harnesses run each test on its own short-lived thread, so a control plane shared by several
/// tests would be killed when the first test finished. Forking from one thread that lives as long
/// as the process avoids that.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawning the e2e-spawner thread");
        requests
    });
    let (reply, response) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("the e2e-spawner thread is gone"))?;
    response
        .recv()
        .map_err(|_| io::Error::other("the e2e-spawner thread is gone"))?
}
