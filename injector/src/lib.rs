//! `lumigo_injector.so`: preloaded into every process of an instrumented container, it
//! makes the Node.js, Python and Java runtimes load Lumigo's tracer by adding to the one
//! environment variable each reads, and leaves every other process exactly as it was.
//!
//! It runs once, from `.init_array`, before `main`. It imports and exports no dynamic symbol
//! (so it loads into any dynamically linked program, libc or not), makes its own system
//! calls, never allocates through libc, and has no panicking code path: a preloaded object
//! that faults or aborts takes its host process down with it. See DESIGN.md.
#![cfg_attr(not(test), no_std)]

mod elf;
#[cfg(not(test))]
mod mem;
mod sys;
mod text;

use elf::Image;
use text::{basename, c_str, compose, composed_len, dirname, Place, Writer};

/// Setting it to anything but empty, `0` or `false` turns the injector off.
const KILL_SWITCH: &[u8] = b"LUMIGO_INJECTOR_DISABLED\0";
/// The directory the `.so` must sit in, inside the payload root (`<root>/injector/`).
const OWN_DIR: &[u8] = b"injector";
const PATH_MAX: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runtime {
    Node,
    Python,
    Java,
}

/// What each runtime needs: its variable, the item to add to it and where, and the file
/// under the payload root that must exist for the item to be safe to add.
struct Plan {
    variable: &'static [u8],
    item_prefix: &'static [u8],
    file: &'static [u8],
    item_is_dir_of_file: bool,
    sep: u8,
    place: Place,
}

impl Runtime {
    fn plan(self) -> Plan {
        match self {
            Runtime::Node => Plan {
                variable: b"NODE_OPTIONS\0",
                item_prefix: b"--require ",
                file: b"/nodejs/register.js",
                item_is_dir_of_file: false,
                sep: b' ',
                place: Place::Front,
            },
            Runtime::Python => Plan {
                variable: b"PYTHONPATH\0",
                item_prefix: b"",
                file: b"/python/bootstrap/sitecustomize.py",
                item_is_dir_of_file: true,
                sep: b':',
                place: Place::Front,
            },
            Runtime::Java => Plan {
                variable: b"JAVA_TOOL_OPTIONS\0",
                item_prefix: b"-javaagent:",
                file: b"/java/javaagent.jar",
                item_is_dir_of_file: false,
                sep: b' ',
                place: Place::Back,
            },
        }
    }
}

/// The running program: its dynamic tables and the file name it was started as.
struct Process {
    exe: Image,
    started_as: &'static [u8],
}

/// Reads the auxiliary vector: `AT_PHDR` locates the main executable's tables in memory,
/// `AT_EXECFN` is the path given to `execve`.
fn process() -> Option<Process> {
    const AT_NULL: u64 = 0;
    const AT_PHDR: u64 = 3;
    const AT_PHNUM: u64 = 5;
    const AT_EXECFN: u64 = 31;
    let mut auxv = [0u64; 64];
    let n = sys::auxv(&mut auxv)?;
    let (mut phdr, mut phnum, mut execfn) = (None, None, None);
    for pair in auxv.get(..n)?.chunks_exact(2) {
        match *pair {
            [AT_NULL, _] => break,
            [AT_PHDR, v] => phdr = usize::try_from(v).ok(),
            [AT_PHNUM, v] => phnum = usize::try_from(v).ok(),
            [AT_EXECFN, v] => execfn = usize::try_from(v).ok(),
            _ => {}
        }
    }
    Some(Process {
        exe: Image::at_phdrs(phdr?, phnum?)?,
        started_as: execfn.and_then(elf::str_at).map(basename).unwrap_or_default(),
    })
}

/// What the running binary is, from its own dynamic tables rather than its name: a renamed
/// `node` is still Node.js, a script named `python` is not Python, and for a `#!` script the
/// kernel has loaded the interpreter, which is what gets classified.
/// - Python: links `libpython*` (shared builds, uWSGI), or exports `Py_BytesMain` / `Py_Main`
///   (static builds export the C API for extension modules);
/// - Node.js: links `libnode*` (distribution builds), or exports `node_module_register` (the
///   addon API of official builds);
/// - Java: links `libjvm*` (custom launchers), or links the launcher library `libjli*` and was
///   started as `java` (`javac`, `jar`, `keytool` link it too).
fn classify(p: &Process) -> Option<Runtime> {
    let exe = &p.exe;
    if exe.needs_library_starting_with(b"libpython")
        || exe.function(b"Py_BytesMain").is_some()
        || exe.function(b"Py_Main").is_some()
    {
        Some(Runtime::Python)
    } else if exe.needs_library_starting_with(b"libnode") || exe.function(b"node_module_register").is_some() {
        Some(Runtime::Node)
    } else if exe.needs_library_starting_with(b"libjvm")
        || (exe.needs_library_starting_with(b"libjli") && p.started_as == b"java")
    {
        Some(Runtime::Java)
    } else {
        None
    }
}

/// musl installs itself as `ld-musl-<arch>.so.1` (Alpine) or `libc.so` in a
/// `<arch>-linux-musl` directory (Debian); glibc as `libc.so.6` or, before 2.34, `libc-2.NN.so`.
fn is_libc(path: &[u8]) -> bool {
    let name = basename(path);
    name == b"libc.so.6"
        || name == b"libc.so"
        || name.starts_with(b"ld-musl-")
        || name.starts_with(b"libc.musl-")
        || (name.starts_with(b"libc-") && name.ends_with(b".so"))
}

/// `<root>` from `<root>/injector/<file>`, if it is a path every variable can carry: the
/// separators of NODE_OPTIONS, PYTHONPATH and JAVA_TOOL_OPTIONS, quotes, and the
/// ` (deleted)` suffix of a replaced file all rule it out.
fn payload_root(own_path: &[u8]) -> Option<&[u8]> {
    let dir = dirname(own_path)?;
    if basename(dir) != OWN_DIR {
        return None;
    }
    let root = dirname(dir)?;
    let plain = |c: &u8| c.is_ascii_graphic() && !matches!(c, b':' | b'"' | b'\'' | b'\\' | b'$');
    (root.starts_with(b"/") && root.iter().all(plain)).then_some(root)
}

type GetEnv = unsafe extern "C" fn(*const u8) -> *const u8;
type SetEnv = unsafe extern "C" fn(*const u8, *const u8, i32) -> i32;

/// libc's `getenv` and `setenv`, and the path this object was loaded from.
fn find_libc_and_self(exe: &Image) -> Option<(GetEnv, SetEnv, &'static [u8])> {
    let own_addr = init as extern "C" fn() as usize;
    let (mut libc, mut own) = (None, None::<elf::Loaded>);
    for object in exe.loaded_objects() {
        if libc.is_none() && is_libc(object.name) {
            libc = Image::at_dynamic(object.bias, object.dynamic);
        }
        // Objects do not overlap, so the highest load address at or below one of this
        // object's own functions is this object's.
        if object.bias <= own_addr && own.as_ref().is_none_or(|o| o.bias < object.bias) {
            own = Some(object);
        }
    }
    let libc = libc?;
    let (getenv, setenv) = (libc.function(b"getenv")?, libc.function(b"setenv")?);
    // SAFETY: both addresses are the default-version definitions of libc's own `getenv` and
    // `setenv`, found in its dynamic symbol table, with exactly these C signatures.
    let (getenv, setenv) = unsafe {
        (
            core::mem::transmute::<usize, GetEnv>(getenv),
            core::mem::transmute::<usize, SetEnv>(setenv),
        )
    };
    Some((getenv, setenv, own?.name))
}

/// Runs `f` on a zeroed buffer of `len` bytes: on the stack when small, else from `mmap`.
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> Option<R>) -> Option<R> {
    let mut small = [0u8; 1024];
    match small.get_mut(..len) {
        Some(buf) => f(buf),
        None => f(sys::Pages::new(len)?.bytes()),
    }
}

fn inject(runtime: Runtime, exe: &Image) -> Option<()> {
    let (getenv, setenv, own_path) = find_libc_and_self(exe)?;
    // SAFETY: getenv with a NUL-terminated name returns null or a NUL-terminated string.
    let current = |name: &[u8]| unsafe { c_str(getenv(name.as_ptr())) };
    if current(KILL_SWITCH).is_some_and(|v| !matches!(v, b"" | b"0" | b"false")) {
        return None;
    }
    let root = payload_root(own_path)?;

    let plan = runtime.plan();
    let mut file_buf = [0u8; PATH_MAX];
    let mut w = Writer::new(&mut file_buf);
    w.push(root).push(plan.file);
    let file = w.finish_c()?;
    if !sys::readable(file) {
        return None;
    }
    let target = file.strip_suffix(b"\0")?;
    let target = if plan.item_is_dir_of_file {
        dirname(target)?
    } else {
        target
    };
    let mut item_buf = [0u8; PATH_MAX + 16];
    let mut w = Writer::new(&mut item_buf);
    w.push(plan.item_prefix).push(target);
    let item = w.finish_c()?.strip_suffix(b"\0")?;

    let old = current(plan.variable).unwrap_or_default();
    with_buffer(composed_len(old, item)?, |buf| {
        let value = compose(buf, old, item, plan.sep, plan.place)?;
        // SAFETY: name and value are NUL-terminated; libc copies both before returning.
        unsafe { setenv(plan.variable.as_ptr(), value.as_ptr(), 1) };
        Some(())
    })
}

fn run() -> Option<()> {
    let process = process()?;
    inject(classify(&process)?, &process.exe)
}

extern "C" fn init() {
    // Failure anywhere means standing down: the process runs as if the injector were absent.
    let _ = run();
}

/// glibc calls this with (argc, argv, envp) and musl with nothing; it reads neither.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// Never called: the release build links with `-z defs`, so if any panicking code path
/// survived optimisation, this undefined symbol would fail the link.
#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    extern "C" {
        fn lumigo_injector_has_a_panicking_code_path() -> !;
    }
    // SAFETY: unreachable by construction; the link fails if it is not.
    unsafe { lumigo_injector_has_a_panicking_code_path() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_glibc_and_musl_by_file_name() {
        for libc in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc-2.31.so",
            "/lib/ld-musl-aarch64.so.1",
            "/usr/lib/x86_64-linux-musl/libc.so",
            "/lib/libc.musl-x86_64.so.1",
        ] {
            assert!(is_libc(libc.as_bytes()), "{libc}");
        }
        for other in [
            "/lib/x86_64-linux-gnu/libcap.so.2",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/libc-client.so.2007",
        ] {
            assert!(!is_libc(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn payload_root_comes_from_the_injector_directory() {
        assert_eq!(
            payload_root(b"/opt/lumigo/injector/lumigo_injector.so"),
            Some(&b"/opt/lumigo"[..])
        );
        assert_eq!(
            payload_root(b"/injector/lumigo_injector.so"),
            Some(&b""[..]).filter(|_| false)
        );
        assert_eq!(payload_root(b"/opt/lumigo/lib/lumigo_injector.so"), None);
        assert_eq!(payload_root(b"/opt/lu migo/injector/lumigo_injector.so"), None);
        assert_eq!(payload_root(b"/opt/a:b/injector/lumigo_injector.so"), None);
        assert_eq!(payload_root(b"relative/injector/lumigo_injector.so"), None);
    }

    #[test]
    fn finds_this_process_libc_and_its_functions() {
        // The unit tests run hosted, against the real glibc of the test binary.
        let exe = process().unwrap().exe;
        let (getenv, _setenv, own_path) = find_libc_and_self(&exe).unwrap();
        let path = unsafe { c_str(getenv(c"PATH".as_ptr().cast())) }.unwrap();
        assert_eq!(path, std::env::var("PATH").unwrap().as_bytes());
        // Linked into the test executable, "this object" is the executable itself.
        assert_eq!(own_path, b"", "the loader lists the main executable without a name");
        let libc = exe.loaded_objects().find(|o| is_libc(o.name)).unwrap();
        let image = Image::at_dynamic(libc.bias, libc.dynamic).unwrap();
        assert!(image.function(b"setenv").is_some());
        assert!(image.function(b"no_such_function_anywhere").is_none());
    }

    #[test]
    fn reads_this_test_executable_from_the_auxiliary_vector() {
        let p = process().unwrap();
        assert!(p.exe.needs_library_starting_with(b"libc.so"));
        assert!(!p.exe.needs_library_starting_with(b"libpython"));
        let argv0 = std::env::args().next().unwrap();
        assert_eq!(
            p.started_as,
            std::path::Path::new(&argv0).file_name().unwrap().as_encoded_bytes()
        );
        assert_eq!(classify(&p), None, "a Rust test binary is no runtime");
    }
}
