//! Fault injection: rates, determinism under a seed, latency, hangs, schedules and the switch.

use std::time::Duration;

use rampart_layers::chaos::{Chaos, ChaosConfig, ChaosLayer, Fault, InjectedFault};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn echo() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(|n: u32| async move { Ok::<_, BoxError>(n) })
}

/// What each of `n` calls saw: `None` for a clean answer, or the injected fault's name.
async fn outcomes(config: ChaosConfig, n: u32) -> Vec<Option<&'static str>> {
    let mut svc = Chaos::new(echo(), config);
    let mut seen = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let out = match svc.ready().await.unwrap().call(i).await {
            Ok(v) if started.elapsed().is_zero() => {
                assert_eq!(v, i);
                None
            }
            Ok(_) => Some("latency"),
            Err(e) => Some(
                e.downcast_ref::<InjectedFault>()
                    .expect("only injected errors")
                    .fault()
                    .as_str(),
            ),
        };
        seen.push(out);
    }
    seen
}

fn mixed(seed: u64) -> ChaosConfig {
    ChaosConfig::builder()
        .error_rate(0.2)
        .timeout_rate(0.1)
        .hang_for(Duration::from_secs(5))
        .latency(0.2, Duration::from_millis(10), Duration::from_millis(50))
        .seed(seed)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_faults() {
    let a = outcomes(mixed(42), 300).await;
    let b = outcomes(mixed(42), 300).await;
    let c = outcomes(mixed(43), 300).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    for kind in ["error", "timeout", "latency"] {
        assert!(a.contains(&Some(kind)), "{kind} never injected");
    }
}

#[tokio::test(start_paused = true)]
async fn rates_are_respected() {
    let seen = outcomes(mixed(1), 5_000).await;
    let share = |k: &str| seen.iter().filter(|o| **o == Some(k)).count() as f64 / seen.len() as f64;
    assert!(
        (0.18..0.22).contains(&share("error")),
        "error {}",
        share("error")
    );
    assert!(
        (0.08..0.12).contains(&share("timeout")),
        "timeout {}",
        share("timeout")
    );
    assert!(
        (0.18..0.22).contains(&share("latency")),
        "latency {}",
        share("latency")
    );
}

#[tokio::test(start_paused = true)]
async fn latency_and_hangs_take_the_configured_time() {
    let config = ChaosConfig::builder()
        .latency(1.0, Duration::from_millis(30), Duration::from_millis(30))
        .build()
        .unwrap();
    let mut svc = Chaos::new(echo(), config);
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    assert_eq!(svc.handle().injected_delays(), 1);

    let config = ChaosConfig::builder()
        .timeout_rate(1.0)
        .hang_for(Duration::from_secs(7))
        .build()
        .unwrap();
    let mut svc = Chaos::new(echo(), config);
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<InjectedFault>().unwrap().fault(),
        Fault::Timeout
    );
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn schedule_and_switch_gate_injection() {
    let config = ChaosConfig::builder()
        .error_rate(1.0)
        .active_during(Duration::from_secs(10), Duration::from_secs(20))
        .build()
        .unwrap();
    let layer = ChaosLayer::new(config);
    let handle = layer.handle();
    let mut svc = layer.layer(echo());
    assert!(
        svc.ready().await.unwrap().call(1).await.is_ok(),
        "before the window"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        svc.ready().await.unwrap().call(1).await.is_err(),
        "inside the window"
    );
    handle.set_enabled(false);
    assert!(
        svc.ready().await.unwrap().call(1).await.is_ok(),
        "switched off"
    );
    handle.set_enabled(true);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        svc.ready().await.unwrap().call(1).await.is_ok(),
        "after the window"
    );
    assert_eq!(handle.injected_errors(), 1);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_injected_by_default() {
    let seen = outcomes(ChaosConfig::default(), 1_000).await;
    assert!(seen.iter().all(Option::is_none));
}

#[test]
fn bad_settings_name_their_field() {
    let b = ChaosConfig::builder;
    assert_eq!(
        b().error_rate(1.5).build().unwrap_err().field(),
        "error_rate"
    );
    assert_eq!(
        b().timeout_rate(-0.1).build().unwrap_err().field(),
        "timeout_rate"
    );
    assert_eq!(
        b().latency(0.5, Duration::from_secs(2), Duration::from_secs(1))
            .build()
            .unwrap_err()
            .field(),
        "latency"
    );
    assert_eq!(
        b().error_rate(0.6)
            .timeout_rate(0.6)
            .build()
            .unwrap_err()
            .field(),
        "error_rate"
    );
    let backwards = b()
        .active_during(Duration::from_secs(5), Duration::from_secs(1))
        .build();
    assert_eq!(backwards.unwrap_err().field(), "active_during");
}
