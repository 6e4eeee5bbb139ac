//! The report: percentiles of the runs' times (a run that timed out counts as longer than the timeout, so a
//! censored percentile shows as "> timeout"), rates, memory per device and growth across cycles, printed
//! as one table per fleet size with sprig's rate over mosquitto's and the floor's.

use super::*;

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Percentiles over all runs made; a run that did not deliver everything within the run timeout counts as
/// `INFINITY` (it took longer than the timeout), so a censored percentile shows as "> timeout".
pub(super) struct Summary {
    pub(super) p50: Option<f64>,
    pub(super) p99: Option<f64>,
    /// Messages per second at p50; for a censored p50, the upper bound N / timeout.
    pub(super) rate: Option<f64>,
    pub(super) rate_is_bound: bool,
}

pub(super) fn summarize(result: &BrokerResult, timeout: Duration) -> Summary {
    let mut times: Vec<f64> = result
        .runs
        .iter()
        .map(|r| r.elapsed.map_or(f64::INFINITY, ms))
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    if times.iter().all(|t| t.is_infinite()) && result.runs.iter().all(|r| r.delivered == 0) {
        // Nothing delivered at all: no bound worth printing.
        return Summary {
            p50: None,
            p99: None,
            rate: None,
            rate_is_bound: false,
        };
    }
    let p50 = percentile(&times, 0.50);
    let rate_is_bound = p50.is_some_and(f64::is_infinite);
    let p50_ms = if rate_is_bound {
        ms(timeout)
    } else {
        p50.unwrap_or(0.0)
    };
    Summary {
        p50,
        p99: percentile(&times, 0.99),
        rate: p50.map(|_| result.n as f64 / (p50_ms.max(0.001) / 1000.0)),
        rate_is_bound,
    }
}

pub(super) fn fmt_ms(v: Option<f64>, timeout: Duration) -> String {
    match v {
        None => "—".into(),
        Some(t) if t.is_infinite() => format!("> {:.0}", ms(timeout)),
        Some(t) => format!("{t:.1}"),
    }
}

pub(super) fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
}

pub(super) fn print_table(results: &[BrokerResult], settings: &Settings) {
    let mut out = String::new();
    let header: Vec<String> = results
        .iter()
        .map(|r| format!("{} N={}", r.broker, r.n))
        .collect();
    out.push_str(&format!("\n| | {} |\n", header.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---|".repeat(results.len())));
    let timeout = settings.run_timeout;
    let summaries: Vec<Summary> = results.iter().map(|r| summarize(r, timeout)).collect();
    let mut row = |name: &str, cells: Vec<String>| {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(
        "devices connected + subscribed",
        results
            .iter()
            .map(|r| {
                format!(
                    "{} of {} in {}",
                    r.connected,
                    r.n,
                    fmt_opt(r.connect_time.map(|d| d.as_secs_f64()), |s| format!(
                        "{s:.2} s"
                    ))
                )
            })
            .collect(),
    );
    row(
        "delivered per run",
        results
            .iter()
            .map(|r| {
                let runs: Vec<String> = r.runs.iter().map(|x| x.delivered.to_string()).collect();
                format!("{} of {}", runs.join(", "), r.n)
            })
            .collect(),
    );
    row(
        "complete runs",
        results
            .iter()
            .map(|r| {
                let done = r.runs.iter().filter(|x| x.elapsed.is_some()).count();
                let skipped = r.planned_runs.saturating_sub(r.runs.len());
                if skipped > 0 {
                    format!("{done} of {} ({skipped} skipped)", r.runs.len())
                } else {
                    format!("{done} of {}", r.runs.len())
                }
            })
            .collect(),
    );
    row(
        "fan-out time p50 (ms)",
        summaries.iter().map(|s| fmt_ms(s.p50, timeout)).collect(),
    );
    row(
        "fan-out time p99 (ms)",
        summaries.iter().map(|s| fmt_ms(s.p99, timeout)).collect(),
    );
    row(
        "fan-out rate at p50 (msgs/s)",
        summaries
            .iter()
            .map(|s| {
                let bound = if s.rate_is_bound { "< " } else { "" };
                fmt_opt(s.rate, |v| format!("{bound}{v:.0}"))
            })
            .collect(),
    );
    row(
        "sprig rate / mosquitto rate",
        results
            .iter()
            .zip(&summaries)
            .map(|(r, s)| {
                if r.broker != "sprig" {
                    return String::new();
                }
                let other = results
                    .iter()
                    .zip(&summaries)
                    .find(|(o, _)| o.broker == "mosquitto" && o.n == r.n)
                    .and_then(|(_, os)| (!os.rate_is_bound).then_some(os.rate).flatten());
                let bound = if s.rate_is_bound { "< " } else { "" };
                match (s.rate, other) {
                    (Some(a), Some(b)) => format!("{bound}{:.3}×", a / b),
                    _ => "—".into(),
                }
            })
            .collect(),
    );
    row(
        "rate / the floor's rate",
        results
            .iter()
            .zip(&summaries)
            .map(|(r, s)| {
                let floor = results
                    .iter()
                    .zip(&summaries)
                    .find(|(o, _)| o.broker == "floor" && o.n == r.n)
                    .and_then(|(_, fs)| (!fs.rate_is_bound).then_some(fs.rate).flatten());
                match (s.rate, floor, r.broker) {
                    (_, _, "floor") => String::new(),
                    (Some(a), Some(b), _) => format!("{:.0} %", 100.0 * a / b),
                    _ => "—".into(),
                }
            })
            .collect(),
    );
    row(
        "CPU while timed, per run: broker / devices (ms, p50)",
        results
            .iter()
            .map(|r| {
                let median = |pick: fn(&(Duration, Duration)) -> Duration| {
                    let mut v: Vec<f64> = r
                        .runs
                        .iter()
                        .filter_map(|x| x.cpu.as_ref().map(|c| ms(pick(c))))
                        .collect();
                    v.sort_by(|a, b| a.total_cmp(b));
                    percentile(&v, 0.5)
                };
                match (median(|c| c.0), median(|c| c.1)) {
                    (Some(b), Some(d)) => format!("{b:.1} / {d:.1}"),
                    _ => "—".into(),
                }
            })
            .collect(),
    );
    row(
        "CreateJob accepted after (ms, p50)",
        results
            .iter()
            .map(|r| {
                let mut v: Vec<f64> = r.runs.iter().filter_map(|x| x.request.map(ms)).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                if r.broker == "sprig" {
                    fmt_opt(percentile(&v, 0.5), |x| format!("{x:.1}"))
                } else {
                    "n/a".into()
                }
            })
            .collect(),
    );
    row(
        "payload bytes, QoS delivered",
        results
            .iter()
            .map(|r| match r.payload {
                Some((len, qos)) => format!(
                    "{len}, {qos}{}",
                    if r.payload_measured {
                        ""
                    } else {
                        " (estimated)"
                    }
                ),
                None => "—".into(),
            })
            .collect(),
    );
    row(
        "RSS idle, no clients (MiB)",
        results.iter().map(|r| mib(r.rss_idle_kb)).collect(),
    );
    row(
        "RSS with N idle devices (MiB)",
        results.iter().map(|r| mib(r.rss_connected_kb)).collect(),
    );
    row(
        "per idle device (KiB)",
        results
            .iter()
            .map(|r| per_device_kib(r, r.rss_connected_kb))
            .collect(),
    );
    row(
        "per idle device holding cmd/{thing}/# (KiB; sprig: a router subscription)",
        results
            .iter()
            .map(|r| match r.rss_routed_kb {
                0 => "—".into(),
                kb => per_device_kib(r, kb),
            })
            .collect(),
    );
    row(
        &format!(
            "RSS after connect/disconnect cycle 1 → {} (MiB)",
            settings.cycles
        ),
        results
            .iter()
            .map(
                |r| match (r.rss_cycles_kb.first(), r.rss_cycles_kb.last()) {
                    (Some(&a), Some(&b)) => format!("{} → {}", mib(a), mib(b)),
                    _ => "—".into(),
                },
            )
            .collect(),
    );
    row(
        "RSS growth, cycle 1 → last (KiB)",
        results
            .iter()
            .map(
                |r| match (r.rss_cycles_kb.first(), r.rss_cycles_kb.last()) {
                    (Some(&a), Some(&b)) => format!("{:+}", b as i64 - a as i64),
                    _ => "—".into(),
                },
            )
            .collect(),
    );
    println!("{out}");
    for r in results {
        let cycles: Vec<String> = r.rss_cycles_kb.iter().map(|&k| mib(k)).collect();
        println!(
            "{} N={}: RSS after each cycle (MiB): {}",
            r.broker,
            r.n,
            cycles.join(", ")
        );
        for (i, run) in r.runs.iter().enumerate() {
            if let Some(e) = &run.error {
                println!("{} N={} run {}: {e}", r.broker, r.n, i + 1);
            }
            if run.stray > 0 {
                println!(
                    "{} N={} run {}: {} messages were not a first delivery of that run",
                    r.broker,
                    r.n,
                    i + 1,
                    run.stray
                );
            }
        }
        if let Some(note) = &r.note {
            println!("{} N={}: {note}", r.broker, r.n);
        }
        if !r.connect_failures.is_empty() {
            println!(
                "{} N={}: connection failures: {:?}",
                r.broker, r.n, r.connect_failures
            );
        }
    }
    let _ = std::io::stdout().flush();
}

/// (`rss_kb` − idle RSS) per device of `r`'s fleet, in KiB.
fn per_device_kib(r: &BrokerResult, rss_kb: u64) -> String {
    format!(
        "{:.1}",
        (rss_kb as f64 - r.rss_idle_kb as f64) / r.n.max(1) as f64
    )
}

/// sprig's rate over the floor's in one round (p50 over p50), when both delivered.
pub(super) fn floor_ratio(round: &[BrokerResult], settings: &Settings) -> Option<f64> {
    let p50 = |name: &str| {
        let result = round.iter().find(|r| r.broker == name)?;
        summarize(result, settings.run_timeout)
            .p50
            .filter(|t| t.is_finite())
    };
    Some(p50("floor")? / p50("sprig")?)
}

/// The rounds of one size as one result per broker: the runs of every round together (their
/// percentiles span the rounds), the memory and connection figures of the first round.
pub(super) fn merge_rounds(rounds: Vec<Vec<BrokerResult>>) -> Vec<BrokerResult> {
    let mut rounds = rounds.into_iter();
    let Some(mut merged) = rounds.next() else {
        return Vec::new();
    };
    for round in rounds {
        for result in round {
            if let Some(first) = merged.iter_mut().find(|m| m.broker == result.broker) {
                first.runs.extend(result.runs);
                first.planned_runs += result.planned_runs;
            }
        }
    }
    merged
}

/// The per-round ratios and their median: the host's speed drifts over minutes (the same binary measured
/// 58 % and 91 % of the floor five minutes apart), so a ratio is only as good as the rounds behind it.
pub(super) fn print_round_ratios(ratios: &[(usize, Vec<f64>)], rounds: usize) {
    println!();
    for (n, of_size) in ratios {
        let mut sorted = of_size.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let listed: Vec<String> = of_size
            .iter()
            .map(|r| format!("{:.0} %", r * 100.0))
            .collect();
        let median =
            percentile(&sorted, 0.5).map_or("—".into(), |m| format!("{:.0} %", m * 100.0));
        println!(
            "sprig's rate / the floor's, N = {n}, each of {rounds} rounds: {}; median {median}",
            listed.join(", ")
        );
    }
}
