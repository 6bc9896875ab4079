//! The handful of system calls the injector makes itself: libc's wrappers are not reachable
//! until the injector has found libc, and linking against them would import symbols.

use core::arch::asm;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const CLOSE: usize = 3;
    pub const MMAP: usize = 9;
    pub const MUNMAP: usize = 11;
    pub const OPENAT: usize = 257;
    pub const FACCESSAT: usize = 269;
    pub const PRCTL: usize = 157;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const CLOSE: usize = 57;
    pub const MMAP: usize = 222;
    pub const MUNMAP: usize = 215;
    pub const OPENAT: usize = 56;
    pub const FACCESSAT: usize = 48;
    pub const PRCTL: usize = 167;
}

const AT_FDCWD: isize = -100;
const O_RDONLY_CLOEXEC: usize = 0o2_000_000;
const R_OK: usize = 4;
const EINTR: isize = 4;
const PROT_READ_WRITE: usize = 3;
const MAP_PRIVATE_ANONYMOUS: usize = 0x22;
const PAGE: usize = 4096;

/// # Safety
/// The arguments must be valid for system call `n`.
#[cfg(target_arch = "x86_64")]
unsafe fn syscall6(n: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments; rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!("syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

/// # Safety
/// The arguments must be valid for system call `n`.
#[cfg(target_arch = "aarch64")]
unsafe fn syscall6(n: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments.
    unsafe {
        asm!("svc 0",
            in("x8") n,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack));
    }
    ret
}

fn retrying(mut call: impl FnMut() -> isize) -> Option<usize> {
    loop {
        let ret = call();
        if ret == -EINTR {
            continue;
        }
        return usize::try_from(ret).ok();
    }
}

/// A path with its terminating NUL, as the kernel wants it.
fn c_path(path: &[u8]) -> Option<usize> {
    match path.last() {
        Some(0) => Some(path.as_ptr() as usize),
        _ => None,
    }
}

/// An open file descriptor, closed when dropped.
pub struct Fd(usize);

impl Fd {
    /// Opens `path` (NUL-terminated) read-only.
    pub fn open(path: &[u8]) -> Option<Fd> {
        let p = c_path(path)?;
        // SAFETY: `p` points to a NUL-terminated string that outlives the call.
        retrying(|| unsafe { syscall6(nr::OPENAT, [AT_FDCWD as usize, p, O_RDONLY_CLOEXEC, 0, 0, 0]) }).map(Fd)
    }

    /// Reads until `buf` is full or the file ends; returns how many bytes were read.
    pub fn read_full(&self, buf: &mut [u8]) -> Option<usize> {
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..) {
            if rest.is_empty() {
                break;
            }
            // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
            let n =
                retrying(|| unsafe { syscall6(nr::READ, [self.0, rest.as_mut_ptr() as usize, rest.len(), 0, 0, 0]) })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Some(filled)
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this value owns.
        unsafe { syscall6(nr::CLOSE, [self.0, 0, 0, 0, 0, 0]) };
    }
}

/// Fills `buf` with the process's auxiliary vector; returns how many words were written.
/// `prctl(PR_GET_AUXV)` (Linux 6.4+) is a plain copy; before it, and under qemu-user (which
/// answers EINVAL), /proc/self/auxv, whose first access in a process costs far more.
pub fn auxv(buf: &mut [u64]) -> Option<usize> {
    const PR_GET_AUXV: usize = 0x4155_5856;
    let bytes = core::mem::size_of_val(buf);
    // SAFETY: the kernel writes at most `bytes` bytes into `buf`.
    let n = retrying(|| unsafe { syscall6(nr::PRCTL, [PR_GET_AUXV, buf.as_mut_ptr() as usize, bytes, 0, 0, 0]) });
    let n = match n {
        Some(n) => core::cmp::min(n, bytes),
        // SAFETY: the u64 slice is viewed as bytes for the read; any bytes are valid u64s.
        None => Fd::open(b"/proc/self/auxv\0")?
            .read_full(unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), bytes) })?,
    };
    Some(n / 8)
}

/// Whether `path` (NUL-terminated) exists and is readable by this process.
pub fn readable(path: &[u8]) -> bool {
    let Some(p) = c_path(path) else { return false };
    // SAFETY: `p` points to a NUL-terminated string that outlives the call.
    retrying(|| unsafe { syscall6(nr::FACCESSAT, [AT_FDCWD as usize, p, R_OK, 0, 0, 0]) }) == Some(0)
}

/// Zeroed anonymous memory from the kernel, unmapped when dropped: the injector never
/// allocates through libc, whose allocator it must not disturb before `main`.
pub struct Pages {
    addr: usize,
    len: usize,
}

impl Pages {
    pub fn new(len: usize) -> Option<Pages> {
        let len = len.checked_add(PAGE - 1)? & !(PAGE - 1);
        // SAFETY: an anonymous private mapping touches no existing memory.
        let addr = unsafe {
            syscall6(
                nr::MMAP,
                [0, len, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, usize::MAX, 0],
            )
        };
        // Errors come back as -4095..-1; anything else is the mapping's address.
        if (-4095..0).contains(&addr) || len == 0 {
            return None;
        }
        Some(Pages {
            addr: addr as usize,
            len,
        })
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes long, readable, writable and owned by `self`.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: unmapping the region this value owns; no reference to it outlives `self`.
        unsafe { syscall6(nr::MUNMAP, [self.addr, self.len, 0, 0, 0, 0]) };
    }
}
