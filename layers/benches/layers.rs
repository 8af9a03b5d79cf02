//! Time per call of every layer and of the whole stack over a ready no-op service, side by side with
//! tower's and tower-resilience's, in one criterion run: `cargo bench --bench layers`.

use std::cell::RefCell;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/mod.rs"]
mod support;

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("layers");
    macro_rules! case {
        ($name:expr, $svc:expr) => {{
            let svc = RefCell::new(Some(rt.block_on(async { $svc })));
            group.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let svc = &svc;
                    async move {
                        let mut taken = svc.borrow_mut().take().expect("one sample at a time");
                        let start = Instant::now();
                        for _ in 0..iters {
                            std::hint::black_box(
                                support::call_async(&mut taken, support::request()).await,
                            );
                        }
                        let elapsed = start.elapsed();
                        *svc.borrow_mut() = Some(taken);
                        elapsed
                    }
                })
            });
        }};
    }
    for_each_case!(case);
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
