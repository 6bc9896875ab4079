//! Evaluates the policy module as Kubewarden's policy-server does: the module is compiled once
//! and pre-instantiated, every call gets a fresh instance, and an epoch deadline cuts off an
//! evaluation that runs too long.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use wapc::{ModuleState, WapcHost, WebAssemblyEngineProvider};
use wasmtime_provider::wasmtime;
use wasmtime_provider::{
    EpochDeadlines, WasmtimeEngineProvider, WasmtimeEngineProviderBuilder,
    WasmtimeEngineProviderPre,
};

use crate::error::{Error, Result};

/// Instances alive at once; more concurrent evaluations than this fail (and are admitted
/// unchanged by the caller), so callers bound their concurrency below it.
const POOLED_INSTANCES: u32 = 128;
/// A policy evaluation needs a few MiB, and one of a 3 MiB object (the apiserver's limit) a few
/// times that. This bounds a runaway or hostile one: a request whose parse would not fit fails
/// (and is admitted unchanged by the caller) instead of growing the host. What the host allocates
/// for a request is then bounded too, as it parses only what an evaluation that fit returned.
const MAX_MEMORY_BYTES: usize = 64 << 20;
/// With fast reset (see `fast_memory_reset`), what an evaluation dirtied (its stack and heap)
/// stays mapped in a slot that is given back, and only the dirtied pages are found and reset
/// with memset. Returning them with madvise instead, and faulting them in again on the next
/// call, made a fresh instance cost 36 µs instead of 23 µs. A slot holds at most this much.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// A provider whose call had a larger payload is not kept (see `LentProvider`): its instance's
/// memory grew with the request.
const REUSE_AFTER_PAYLOAD_BYTES: usize = 64 << 10;
/// A table (the module's function pointers, a few KiB) is reset in place rather than unmapped:
/// unmapping it made every teardown an `madvise` with a TLB shootdown on every core running the
/// operator, and every instance fault its table back in: 4.6% of the operator's CPU under load.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// How often the epoch advances; deadlines are whole ticks.
    pub tick: Duration,
    /// How long one evaluation may run.
    pub deadline: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            tick: Duration::from_millis(10),
            deadline: Duration::from_secs(1),
        }
    }
}

pub struct PolicyEngine {
    pre: WasmtimeEngineProviderPre,
    deadlines: EpochDeadlines,
    /// Providers made by `pre`, waiting to serve a call: see `LentProvider`.
    idle: Arc<Mutex<Vec<WasmtimeEngineProvider>>>,
    ticker: EpochTicker,
}

impl PolicyEngine {
    /// Calls that may run at once; callers bound their concurrency to it.
    pub const MAX_CONCURRENT_CALLS: usize = POOLED_INSTANCES as usize;

    /// Compiles `module` (WebAssembly bytes) and prepares it for calls.
    pub fn new(module: &[u8], options: EngineOptions) -> Result<Self> {
        let engine = wasmtime_engine()?;
        let module =
            wasmtime::Module::new(&engine, module).map_err(|e| Error::Engine(e.to_string()))?;
        Self::with_module(engine, module, options)
    }

    /// Compiles `module` to the machine code `from_precompiled` loads. Compiling touches
    /// megabytes of compiler code and heap; a long-lived process can have another process of
    /// its own build do it and stay small.
    pub fn precompile(module: &[u8]) -> Result<Vec<u8>> {
        wasmtime_engine()?
            .precompile_module(module)
            .map_err(|e| Error::Engine(e.to_string()))
    }

    /// Prepares machine code made by `precompile`. Wasmtime refuses code from another wasmtime
    /// version or other engine settings.
    ///
    /// # Safety
    /// `precompiled` is run as native code: it must be what `precompile` of this same build
    /// returned, unaltered (e.g. read back from a child process it was handed to).
    pub unsafe fn from_precompiled(precompiled: &[u8], options: EngineOptions) -> Result<Self> {
        let engine = wasmtime_engine()?;
        // SAFETY: the caller vouches that these bytes come from `precompile`.
        let module = unsafe { wasmtime::Module::deserialize(&engine, precompiled) }
            .map_err(|e| Error::Engine(e.to_string()))?;
        Self::with_module(engine, module, options)
    }

    fn with_module(
        engine: wasmtime::Engine,
        module: wasmtime::Module,
        options: EngineOptions,
    ) -> Result<Self> {
        let ticks = (options.deadline.as_nanos() / options.tick.as_nanos().max(1)).max(1) as u64;
        let deadlines = EpochDeadlines {
            wapc_init: ticks,
            wapc_func: ticks,
        };
        let pre = WasmtimeEngineProviderBuilder::new()
            .engine(engine.clone())
            .module(module)
            .enable_epoch_interruptions(deadlines)
            .build_pre()
            .map_err(|e| Error::Engine(e.to_string()))?;
        Ok(PolicyEngine {
            pre,
            deadlines,
            idle: Arc::default(),
            ticker: EpochTicker::start(engine, options.tick),
        })
    }

    /// Calls a waPC function of the module on a fresh instance.
    pub fn call(&self, function: &str, payload: &[u8]) -> Result<Vec<u8>> {
        self.instantiate()?.call(function, payload)
    }

    /// A fresh instance, for one call.
    pub fn instantiate(&self) -> Result<Instance> {
        debug_assert!(self.ticker.is_running());
        let idle = self.idle.lock().expect("no call panics holding it").pop();
        let provider = match idle {
            Some(provider) => provider,
            None => self
                .pre
                .rehydrate(Some(self.deadlines))
                .map_err(|e| Error::Engine(e.to_string()))?,
        };
        let reusable = Arc::new(AtomicBool::new(true));
        let lent = LentProvider {
            provider: Some(provider),
            idle: self.idle.clone(),
            reusable: reusable.clone(),
        };
        let host = WapcHost::new(Box::new(lent), Some(Box::new(answer_host_call)))
            .map_err(|e| Error::Evaluation(e.to_string()))?;
        Ok(Instance { host, reusable })
    }
}

/// A provider lent to one `WapcHost`, given back to the engine when the host is dropped.
///
/// `WapcHost::new` initialises its provider, and a provider's `init` makes a new store and a
/// new instance in it from the pre-instantiated module: the previous call's store, memory and
/// WASI context are dropped, so each call still runs in a fresh instance. What is kept is the
/// provider itself, whose making (`rehydrate`) clones the linker with every WASI import, by
/// name: half of what a fresh instance cost, 7% of the operator's CPU under load.
///
/// Until its next call an idle provider keeps the memory its last instance used: after a large
/// request (tens of MiB of module memory) it is dropped instead, so that what idle providers
/// hold stays small.
struct LentProvider {
    provider: Option<WasmtimeEngineProvider>,
    idle: Arc<Mutex<Vec<WasmtimeEngineProvider>>>,
    reusable: Arc<AtomicBool>,
}

impl LentProvider {
    fn provider(&mut self) -> &mut WasmtimeEngineProvider {
        self.provider
            .as_mut()
            .expect("present until the lender is dropped")
    }
}

type ProviderResult<T> = std::result::Result<T, Box<dyn StdError + Send + Sync>>;

impl WebAssemblyEngineProvider for LentProvider {
    fn init(&mut self, host: Arc<ModuleState>) -> ProviderResult<()> {
        self.provider().init(host)
    }

    fn call(&mut self, op_length: i32, msg_length: i32) -> ProviderResult<i32> {
        self.provider().call(op_length, msg_length)
    }

    fn replace(&mut self, module: &[u8]) -> ProviderResult<()> {
        self.provider().replace(module)
    }
}

impl Drop for LentProvider {
    fn drop(&mut self) {
        if !self.reusable.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(provider), Ok(mut idle)) = (self.provider.take(), self.idle.lock()) {
            // At most one per instance slot: a burst of calls leaves no more than the pool holds.
            if idle.len() < POOLED_INSTANCES as usize {
                idle.push(provider);
            }
        }
    }
}

/// An instance of the module that has run its initialisation. `PolicyEngine::call` uses one
/// per call, so that no state passes from one evaluation to the next; an instance called
/// twice sees what the first call left in its memory.
pub struct Instance {
    host: WapcHost,
    /// Whether its provider may serve another call once this instance is dropped.
    reusable: Arc<AtomicBool>,
}

impl Instance {
    pub fn call(&self, function: &str, payload: &[u8]) -> Result<Vec<u8>> {
        if payload.len() > REUSE_AFTER_PAYLOAD_BYTES {
            self.reusable.store(false, Ordering::Relaxed);
        }
        self.host
            .call(function, payload)
            .map_err(|e| Error::Evaluation(e.to_string()))
    }
}

/// One engine configuration for compiling and for loading precompiled code, which must agree.
fn wasmtime_engine() -> Result<wasmtime::Engine> {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    // Every evaluation gets a fresh instance; the pooling allocator makes that cheap by
    // reusing memory slots instead of mapping a new linear memory each time.
    let mut pooling = wasmtime::PoolingAllocationConfig::new();
    pooling
        .total_memories(POOLED_INSTANCES)
        .total_tables(POOLED_INSTANCES)
        .total_core_instances(POOLED_INSTANCES)
        .max_memory_size(MAX_MEMORY_BYTES)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
    if fast_memory_reset() {
        pooling
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Yes);
    }
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    wasmtime::Engine::new(&config).map_err(|e| Error::Engine(e.to_string()))
}

/// Whether a returned memory slot may be reset by finding its dirty pages (PAGEMAP_SCAN,
/// Linux 6.7+) instead of unmapping it. Without that ioctl, keeping pages resident would mean
/// a memset of all of them on every call, slower and larger than unmapping. With swap, a page
/// dirtied by an evaluation and swapped out before its reset is not reported as present and
/// would keep its contents into the next instance (wasmtime#14357): a node with a swap device
/// gets the unmapping reset, which is always exact.
fn fast_memory_reset() -> bool {
    wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() && !swap_configured()
}

/// Any swap device or file on the machine (`/proc/swaps` is not namespaced: a container sees
/// the node's). Unreadable counts as configured.
fn swap_configured() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |swaps| {
        swaps.lines().skip(1).any(|line| !line.trim().is_empty())
    })
}

/// The module's calls to its host. Kubewarden's SDK logs through `kubewarden/tracing/log`
/// and panics inside the guest when that call fails, so it is answered; the cluster-context
/// capabilities are not offered.
fn answer_host_call(
    _id: u64,
    binding: &str,
    namespace: &str,
    operation: &str,
    _payload: &[u8],
) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    match (binding, namespace, operation) {
        ("kubewarden", "tracing", "log") => Ok(Vec::new()),
        _ => {
            Err(format!("host capability {binding}/{namespace}/{operation} is not offered").into())
        }
    }
}

/// Advances the engine's epoch on a thread of its own until dropped.
struct EpochTicker {
    running: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while flag.load(Ordering::Relaxed) {
                    thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { running }
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}
