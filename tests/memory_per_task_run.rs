//! Memory per task run (issue 16, item 2; issue 15): an execution that grows by one task run
//! grows the engine's heap by kilobytes, not megabytes. A counting global allocator tracks the
//! live heap of this test process; the peak during a ForEach of `n` Return tasks on the embedded
//! SQLite engine is measured for two sizes, and the growth per extra task run must stay under a
//! bound that a per-task-run copy of the run history (the 400 KB per task run fixed in session 8)
//! would break.
//!
//! One test in this binary (the allocator counts the whole process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indexmap::IndexMap;
use kestra::Engine;
use kestra::jdbc::JdbcBackend;
use kestra::storage::LocalStorage;

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// `GlobalAlloc` needs an `unsafe impl`; the workspace denies `unsafe_code`, allowed here for this
// test allocator alone, which only forwards to `System` and counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn for_each(n: usize) -> String {
    let values: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    format!(
        "id: each{n}\nnamespace: memory.test\ntasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [{}]\n    concurrencyLimit: 0\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{{{ taskrun.value }}}}\"\n",
        values.join(", ")
    )
}

/// Peak live heap (bytes above the level before it started) while one ForEach of `n` runs.
async fn peak_of_run(engine: &Engine, n: usize) -> usize {
    let flow = format!("each{n}");
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let created = engine
        .execute("memory.test", &flow, IndexMap::new())
        .await
        .unwrap();
    let done = engine
        .wait_for(&created.id, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(done.state.current().as_str(), "SUCCESS", "{flow}");
    assert_eq!(done.task_run_list.len(), n + 1, "{flow}: one run per value");
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heap_grows_by_kilobytes_per_task_run() {
    const SMALL: usize = 50;
    const LARGE: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/memory.db?mode=rwc", dir.path().display());
    let backend = JdbcBackend::connect(&url).await.unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("storage")).unwrap());
    let engine = Engine::builder(backend.queue(), backend.repositories(), storage).start();
    for n in [SMALL, LARGE] {
        engine.deploy(&for_each(n)).await.unwrap();
    }
    // Warm-up (pools, caches, the first statements).
    peak_of_run(&engine, SMALL).await;
    let small = peak_of_run(&engine, SMALL).await;
    let large = peak_of_run(&engine, LARGE).await;
    let per_run = large.saturating_sub(small) / (LARGE - SMALL);
    eprintln!(
        "[memory] peak heap above the start: ForEach {SMALL}: {} KiB, ForEach {LARGE}: {} KiB; \
         {} bytes per extra task run",
        small / 1024,
        large / 1024,
        per_run
    );
    // Kilobytes, not megabytes: about 10 KB of live heap per task run measured here (2026-12-03;
    // ~30 KB of RSS per task run in release builds). 64 KiB leaves room for timing (how many jobs
    // are in flight at the peak) and fails on a per-job copy of the run history (the session-8
    // bug: ~310 MB more at 1,000 values, about 125 KB per task run already at 400, growing with n).
    assert!(
        per_run < 64 * 1024,
        "the heap grows by {per_run} bytes per task run (ForEach {SMALL}: {small} bytes, \
         ForEach {LARGE}: {large} bytes)"
    );
    engine.shutdown().await;
}
