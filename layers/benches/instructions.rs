//! Instructions and heap allocations per call of every layer and of the whole stack, side by side with
//! tower's and tower-resilience's, over a ready no-op service.
//!
//! `cargo bench --bench instructions` measures allocations in process (a counting global allocator) and,
//! when `valgrind` is on the `PATH`, runs itself under `valgrind --tool=callgrind` twice per case (with
//! 2,000 and 12,000 calls) and reports the difference divided by 10,000: setup, warm-up and exit cancel
//! out, leaving what one call costs. Instruction counts, unlike times, do not move with the machine's load.
//!
//! By hand: `valgrind --tool=callgrind <bench binary> --case <index> --calls <n>` runs one case.

use std::alloc::System;
use std::process::Command;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[path = "support/mod.rs"]
mod support;

const WARM_UP: u64 = 100;
const FEW: u64 = 2_000;
const MANY: u64 = 12_000;

struct Row {
    name: &'static str,
    allocs: f64,
}

/// Runs the selected case (or all) `calls` times after a warm-up; returns allocations per call.
#[allow(unused_assignments)] // the last case's increment
fn run(rt: &tokio::runtime::Runtime, selected: Option<usize>, calls: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut index = 0;
    macro_rules! case {
        ($name:expr, $svc:expr) => {
            if selected.is_none_or(|s| s == index) {
                // Built on the runtime, driven outside any task: tokio's cooperative budget would make
                // every 128th call of a tokio-based layer yield.
                let mut svc = rt.block_on(async { $svc });
                let mut cx = support::noop_context();
                for _ in 0..WARM_UP {
                    std::hint::black_box(support::call_once(&mut svc, support::request(), &mut cx));
                }
                let region = Region::new(GLOBAL);
                for _ in 0..calls {
                    std::hint::black_box(support::call_once(
                        &mut svc,
                        std::hint::black_box(support::request()),
                        &mut cx,
                    ));
                }
                let allocs = region.change().allocations as f64 / calls as f64;
                rows.push(Row {
                    name: $name,
                    allocs,
                });
            }
            index += 1;
        };
    }
    for_each_case!(case);
    rows
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Instructions of one child run under callgrind, or `None` if valgrind could not run.
fn collected(case: usize, calls: u64) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args(["--case", &case.to_string(), "--calls", &calls.to_string()])
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let rt = runtime();
    let _entered = rt.enter();
    if let Some(case) = flag("--case") {
        let calls = flag("--calls").unwrap_or(MANY);
        run(&rt, Some(case as usize), calls);
        return;
    }
    // `cargo bench` passes `--bench`; a filter, as criterion takes, selects cases by name.
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned();
    let rows = run(&rt, None, MANY);
    let valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    println!("| case | instructions / call | heap allocations / call |");
    println!("|---|---:|---:|");
    for (index, row) in rows.iter().enumerate() {
        if filter
            .as_ref()
            .is_some_and(|f| !row.name.contains(f.as_str()))
        {
            continue;
        }
        let instructions = if valgrind {
            match (collected(index, FEW), collected(index, MANY)) {
                (Some(few), Some(many)) => {
                    format!("{:.0}", (many as f64 - few as f64) / (MANY - FEW) as f64)
                }
                _ => "n/a".to_owned(),
            }
        } else {
            "no valgrind".to_owned()
        };
        println!("| {} | {} | {:.2} |", row.name, instructions, row.allocs);
    }
}
