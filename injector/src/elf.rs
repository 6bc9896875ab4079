//! Just enough ELF to read, in memory, the dynamic tables of objects the dynamic loader has
//! loaded. Only what the loader has itself already walked is read: the main executable, found
//! through the auxiliary vector, and the objects on the loader's debugger list (DT_DEBUG →
//! r_debug → link_map, which glibc and musl both keep), so every table pointer followed is one
//! the loader used. Reads are still checked for null and overflow, strings are read a byte at a
//! time up to their terminator, and every loop is bounded.

const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_DEBUG: u64 = 21;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const DT_VERSYM: u64 = 0x6fff_fff0;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
const VERSYM_HIDDEN: u16 = 0x8000;
const SYM_SIZE: usize = 24;
const PHDR_SIZE: usize = 56;
const DYN_SIZE: usize = 16;
/// Far more entries than any real dynamic section, hash chain or list of loaded objects has:
/// a loop bound only a corrupt table could reach.
const MAX_STEPS: usize = 1 << 16;
/// Longest string read: a path.
const MAX_STRING: usize = 4096;

fn read<T: Copy>(addr: usize) -> Option<T> {
    if addr == 0 {
        return None;
    }
    addr.checked_add(core::mem::size_of::<T>())?;
    // SAFETY: `addr` comes from the loader's own tables (see the module comment); unaligned
    // reads are allowed.
    Some(unsafe { core::ptr::read_unaligned(addr as *const T) })
}

/// The NUL-terminated string at `addr`, if shorter than `MAX_STRING`.
pub fn str_at(addr: usize) -> Option<&'static [u8]> {
    let len = (0..MAX_STRING).find(|&i| addr.checked_add(i).and_then(read::<u8>) == Some(0))?;
    // SAFETY: the `len` bytes before the terminator were just read, and loaded objects'
    // strings stay mapped for the life of the process.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// Whether the NUL-terminated string at `addr` is `name`; stops at the first difference, so
/// it never reads past the end of a shorter string.
fn str_eq(addr: usize, name: &[u8]) -> bool {
    let mut at = addr;
    for &expected in name.iter().chain(core::iter::once(&0)) {
        if read::<u8>(at) != Some(expected) {
            return false;
        }
        let Some(next) = at.checked_add(1) else { return false };
        at = next;
    }
    true
}

/// A loaded ELF object's dynamic symbol tables.
pub struct Image {
    bias: usize,
    strtab: usize,
    strsz: usize,
    symtab: usize,
    gnu_hash: Option<usize>,
    hash: Option<usize>,
    versym: Option<usize>,
    dynamic: usize,
    debug: Option<usize>,
}

impl Image {
    /// The object whose program headers are at `phdrs`, as the auxiliary vector gives them
    /// for the main executable.
    pub fn at_phdrs(phdrs: usize, phnum: usize) -> Option<Self> {
        let bias = phdrs.checked_sub(find_phdr(phdrs, phnum, PT_PHDR)?)?;
        Self::at_dynamic(bias, bias.checked_add(find_phdr(phdrs, phnum, PT_DYNAMIC)?)?)
    }

    /// The object loaded at `bias` whose dynamic section is at `dynamic`.
    pub fn at_dynamic(bias: usize, dynamic: usize) -> Option<Self> {
        let ptr = |val| pointer(bias, val);
        let (mut strtab, mut symtab, mut strsz, mut debug) = (None, None, usize::MAX, None);
        let (mut gnu_hash, mut hash, mut versym) = (None, None, None);
        for (tag, val) in dyn_entries(dynamic) {
            match tag {
                DT_STRTAB => strtab = ptr(val),
                DT_SYMTAB => symtab = ptr(val),
                DT_STRSZ => strsz = usize::try_from(val).ok()?,
                DT_SYMENT if val != SYM_SIZE as u64 => return None,
                DT_GNU_HASH => gnu_hash = ptr(val),
                DT_HASH => hash = ptr(val),
                DT_VERSYM => versym = ptr(val),
                // Written at start-up by the loader: an absolute address, never an offset.
                DT_DEBUG => debug = usize::try_from(val).ok().filter(|&v| v != 0),
                _ => {}
            }
        }
        Some(Image {
            bias,
            strtab: strtab?,
            strsz,
            symtab: symtab?,
            gnu_hash,
            hash,
            versym,
            dynamic,
            debug,
        })
    }

    /// The objects the dynamic loader has loaded, from the debugger interface it publishes in
    /// the main executable's DT_DEBUG entry.
    pub fn loaded_objects(&self) -> impl Iterator<Item = Loaded> {
        // r_debug { int r_version; link_map *r_map; ... }, the same in glibc and musl.
        let mut next = self.debug.and_then(|d| read::<usize>(d.checked_add(8)?));
        (0..MAX_STEPS).map_while(move |_| {
            // link_map { l_addr; char *l_name; Dyn *l_ld; link_map *l_next; ... }, likewise.
            let at = next.filter(|&a| a != 0)?;
            next = read::<usize>(at.checked_add(24)?);
            Some(Loaded {
                bias: read::<usize>(at)?,
                name: read::<usize>(at.checked_add(8)?).and_then(str_at).unwrap_or_default(),
                dynamic: read::<usize>(at.checked_add(16)?)?,
            })
        })
    }

    /// Whether the file name of one of the object's DT_NEEDED libraries starts with `prefix`.
    pub fn needs_library_starting_with(&self, prefix: &[u8]) -> bool {
        dyn_entries(self.dynamic).any(|(tag, val)| {
            tag == DT_NEEDED
                && usize::try_from(val)
                    .ok()
                    .and_then(|off| self.strtab.checked_add(off))
                    .and_then(str_at)
                    .is_some_and(|name| crate::text::basename(name).starts_with(prefix))
        })
    }

    /// The address of the exported function `name`, if the object defines one.
    pub fn function(&self, name: &[u8]) -> Option<usize> {
        match (self.gnu_hash, self.hash) {
            (Some(gh), _) => self.gnu_lookup(gh, name),
            (None, Some(h)) => self.sysv_lookup(h, name),
            (None, None) => None,
        }
    }

    /// The address if symbol `idx` is the default version of function `name`, defined here.
    fn defined_function(&self, idx: usize, name: &[u8]) -> Option<usize> {
        let sym = self.symtab.checked_add(idx.checked_mul(SYM_SIZE)?)?;
        let st_name = usize::try_from(read::<u32>(sym)?).ok()?;
        if st_name >= self.strsz || !str_eq(self.strtab.checked_add(st_name)?, name) {
            return None;
        }
        let info = read::<u8>(sym + 4)?;
        let shndx = read::<u16>(sym + 6)?;
        let value = usize::try_from(read::<u64>(sym + 8)?).ok()?;
        if info & 0xf != STT_FUNC || !matches!(info >> 4, STB_GLOBAL | STB_WEAK) || shndx == 0 || value == 0 {
            return None;
        }
        if let Some(versym) = self.versym {
            let ver = read::<u16>(versym.checked_add(idx.checked_mul(2)?)?)?;
            if ver & VERSYM_HIDDEN != 0 {
                return None;
            }
        }
        self.bias.checked_add(value)
    }

    fn gnu_lookup(&self, table: usize, name: &[u8]) -> Option<usize> {
        let h = name
            .iter()
            .fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(u32::from(c)));
        let nbuckets = usize::try_from(read::<u32>(table)?).ok()?;
        let symoffset = usize::try_from(read::<u32>(table + 4)?).ok()?;
        let bloom_words = usize::try_from(read::<u32>(table + 8)?).ok()?;
        let bloom_shift = read::<u32>(table + 12)?;
        // The Bloom filter answers most misses (every process is asked about names it does not
        // export) from one word, without touching the chains, symbols and strings.
        let word_index = usize::try_from(h / 64).ok()?.checked_rem(bloom_words)?;
        let word = read::<u64>(table.checked_add(16)?.checked_add(word_index.checked_mul(8)?)?)?;
        let mask = (1u64 << (h % 64)) | (1u64 << (h.checked_shr(bloom_shift).unwrap_or(0) % 64));
        if word & mask != mask {
            return None;
        }
        let buckets = table.checked_add(16)?.checked_add(bloom_words.checked_mul(8)?)?;
        let chains = buckets.checked_add(nbuckets.checked_mul(4)?)?;
        let bucket = usize::try_from(h).ok()?.checked_rem(nbuckets)?;
        let mut idx = usize::try_from(read::<u32>(buckets.checked_add(bucket * 4)?)?).ok()?;
        if idx < symoffset {
            return None;
        }
        for _ in 0..MAX_STEPS {
            let chain = read::<u32>(chains.checked_add((idx - symoffset).checked_mul(4)?)?)?;
            if chain | 1 == h | 1 {
                if let Some(addr) = self.defined_function(idx, name) {
                    return Some(addr);
                }
            }
            if chain & 1 != 0 {
                return None;
            }
            idx = idx.checked_add(1)?;
        }
        None
    }

    fn sysv_lookup(&self, table: usize, name: &[u8]) -> Option<usize> {
        let h = name.iter().fold(0u32, |h, &c| {
            let h = (h << 4).wrapping_add(u32::from(c));
            let g = h & 0xf000_0000;
            (h ^ (g >> 24)) & !g
        });
        let nbucket = usize::try_from(read::<u32>(table)?).ok()?;
        let buckets = table.checked_add(8)?;
        let chains = buckets.checked_add(nbucket.checked_mul(4)?)?;
        let bucket = usize::try_from(h).ok()?.checked_rem(nbucket)?;
        let mut idx = usize::try_from(read::<u32>(buckets.checked_add(bucket * 4)?)?).ok()?;
        for _ in 0..MAX_STEPS {
            if idx == 0 {
                return None;
            }
            if let Some(addr) = self.defined_function(idx, name) {
                return Some(addr);
            }
            idx = usize::try_from(read::<u32>(chains.checked_add(idx.checked_mul(4)?)?)?).ok()?;
        }
        None
    }
}

/// One entry of the loader's list of loaded objects.
pub struct Loaded {
    pub bias: usize,
    pub name: &'static [u8],
    pub dynamic: usize,
}

fn dyn_entries(dynamic: usize) -> impl Iterator<Item = (u64, u64)> {
    (0..MAX_STEPS)
        .map_while(move |i| {
            let at = dynamic.checked_add(i.checked_mul(DYN_SIZE)?)?;
            Some((read::<u64>(at)?, read::<u64>(at.checked_add(8)?)?))
        })
        .take_while(|&(tag, _)| tag != DT_NULL)
}

/// A dynamic-section pointer as an address. glibc rewrites these to absolute addresses when it
/// loads an object; musl leaves them as offsets from the load bias. An absolute address is
/// never below the bias, an offset always is.
fn pointer(bias: usize, val: u64) -> Option<usize> {
    let v = usize::try_from(val).ok()?;
    let addr = if v >= bias { v } else { bias.checked_add(v)? };
    (addr != 0).then_some(addr)
}

/// The `p_vaddr` of the first program header of type `kind`.
fn find_phdr(phdrs: usize, phnum: usize, kind: u32) -> Option<usize> {
    (0..phnum).find_map(|i| {
        let at = phdrs.checked_add(i.checked_mul(PHDR_SIZE)?)?;
        if read::<u32>(at)? != kind {
            return None;
        }
        usize::try_from(read::<u64>(at.checked_add(16)?)?).ok()
    })
}
