#!/usr/bin/env python3
"""Where the operator's CPU goes during the admission load bench, by what a review is doing.

Reads `perf script -F comm,tid,ip,sym` of a DWARF-unwound profile on stdin (written by
`just operator::profile-admission`) and prints the share of samples in each part of a review's
path. A sample belongs to the first rule, in the order below, that a frame of its stack matches:
the most specific step of a review wins over the layers it runs inside (a JSON parse inside the
patch computation counts as the patch, memory allocation counts for whoever allocates).
"""

import re
import sys
from collections import Counter

# (part, pattern over the symbol of the sample's first frame that matches, [a pattern another frame
# must match too]). Specific steps first, the layers they run in last.
RULES = [
    ("wasm: fresh instance (the last call's store reset and dropped, store, WASI context, "
     "instantiation, module init)",
     r"PolicyEngine::instantiate|WapcHost::new|WasmtimeEngineProviderPre::rehydrate"),
    ("wasm: instance teardown (memory reset: pagemap scan, decommit)",
     r"drop_in_place<lumigo_policy_host::engine::Instance>|drop_in_place<wapc::"),
    ("wasm: evaluation (the module's code and its host calls)",
     r"WapcHost::call|^JIT$"),
    ("events: queueing admission events", r"admission::events::"),
    ("patch: JSON Patch diff", r"json_patch::diff"),
    ("patch: injection record inspected (before/after)", r"review::change_reason|lumigo_mutation::"),
    ("patch: base64 of the patch", r"base64::"),
    ("patch: parsing the module's answer and the object", r"review::Reviewer::respond"),
    ("settings: namespace lookup and serialisation",
     r"Reviewer::settings_for|review::validation_request|settings::admission_settings"),
    ("waiting for an evaluation slot", r"Evaluator::validate"),
    ("request: JSON head parse", r"review::Reviewer::review"),
    ("response: AdmissionReview serialisation", r"AdmissionResponse::review_json"),
    ("request body: budget and collection", r"limits::ByteBudget::read"),
    ("logging", r"^tracing|tracing_subscriber"),
    # Reviewer::review and most of what it calls are inlined into `answer`, itself inlined into
    # the connection's task in some builds: their JSON work shows there without their names.
    ("request and answer JSON: head parse, answer and object parse, settings and review "
     "serialisation", r"serde_json::|^indexmap::|sip::Hasher|BuildHasher::hash_one|^hashbrown::",
     r"admission::answer|AdmissionServer::run"),
    ("kernel: network (TCP send and receive, waking the client, epoll)",
     r"^(tcp_|sock_|inet_|ip_|__ip_|__tcp_|__sys_sendto|__sys_recvfrom|do_writev|vfs_writev|vfs_read|"
     r"ep_poll|do_epoll_wait|__x64_sys_epoll|__x64_sys_read|__x64_sys_write|net_rx_action|__napi_poll)"),
    ("kernel: page faults and memory mapping",
     r"^(exc_page_fault|asm_exc_page_fault|__x64_sys_madvise|__x64_sys_mmap|__x64_sys_munmap|do_madvise|"
     r"__x64_sys_ioctl)"),
    ("kernel: scheduling and futex wake-ups",
     r"^(__x64_sys_futex|futex_|schedule|__schedule|finish_task_switch|__x64_sys_sched_yield|try_to_wake_up)"),
    ("TLS: rustls record encryption and decryption", r"rustls::|ring_core|tokio_rustls::"),
    ("HTTP: hyper parsing and encoding", r"^hyper::|^<hyper::"),
    ("async runtime: task scheduling and I/O readiness", r"^tokio::|^<tokio::|mio::"),
    ("memory allocator (outside the parts above)", r"^_?mi_|mimalloc"),
]
COMPILED = [
    (rule[0], re.compile(rule[1]), re.compile(rule[2]) if len(rule) > 2 else None)
    for rule in RULES
]
OTHER = "other (kube watches, timers, threads not serving reviews...)"


def samples(lines):
    """Yields each sample's frames' symbols, leaf first."""
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            if frames:
                yield frames
            frames = []
        elif line.startswith(("\t", " ")):
            address, _, symbol = line.strip().partition(" ")
            if symbol == "[unknown]":
                # The end of every stack, or code perf has no symbol for: the module's machine
                # code, which is not in any file (DWARF unwinding stops there).
                if address == "ffffffffffffffff":
                    continue
                symbol = "JIT" if not frames else symbol
            frames.append(symbol)
    if frames:
        yield frames


def part_of(frames):
    for part, pattern, within in COMPILED:
        if any(pattern.search(frame) for frame in frames) and (
            within is None or any(within.search(frame) for frame in frames)
        ):
            return part
    return OTHER


def main():
    counts = Counter(part_of(frames) for frames in samples(sys.stdin))
    total = sum(counts.values())
    if not total:
        sys.exit("no samples: was the profile recorded with --call-graph dwarf?")
    print(f"{total} samples of the operator's threads, by part of the review path")
    for part, count in counts.most_common():
        print(f"{100 * count / total:6.1f}%  {part}")


if __name__ == "__main__":
    main()
