//! Counts the messages rumqttd's router skips for subscribers that fell behind, and says so in sprig's log.
//!
//! The router keeps each filter's messages in an in-memory log of `broker.max_segment_size` ×
//! `broker.max_segment_count` bytes. A subscriber that reads slower than others publish (a client that
//! stopped reading its socket, say) falls behind; once its position is in a segment the log has dropped,
//! the router moves it to the oldest message still there, and the ones in between are never delivered.
//! rumqttd records that as a "cursor jump" alert, but 0.20 hands alerts out only when its own server's
//! metrics timer asks for them, and that timer's event is private to the crate; what it does do every time
//! is log a warning (`Read cursor start jumped from .. to .. on {filter}`, target `rumqttd::router`).
//! So sprig counts those warnings: [`layer`] is part of the daemon's logging (it sees rumqttd's warnings
//! whatever `RUST_LOG` says), and `report` logs the running total at most once per [`REPORT_EVERY`] while
//! they happen. Job notifications and device API replies never go through the router (see `direct`), so
//! nothing sprig itself sends can be skipped; this is about what clients publish to each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::{FilterExt as _, Targets};
use tracing_subscriber::layer::{Context, Filter, Layer};

/// The least time between two reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Cursor jumps seen since the process started.
static JUMPS: AtomicU64 = AtomicU64::new(0);

/// Wakes [`report`] when a jump is counted.
fn wake() -> &'static Notify {
    static WAKE: OnceLock<Notify> = OnceLock::new();
    WAKE.get_or_init(Notify::new)
}

/// Cursor jumps counted so far (since the process started).
pub fn count() -> u64 {
    JUMPS.load(Ordering::Relaxed)
}

/// The logging layer that counts rumqttd's cursor-jump warnings, with its own filter: it must see them
/// even when `RUST_LOG` hides rumqttd.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    CursorJumps.with_filter(router_warnings::<S>().and(no_router_spans()))
}

/// A filter that refuses rumqttd's spans (and lets everything else through): see
/// `cli::admin::init_tracing`.
pub fn no_router_spans<S>() -> impl Filter<S> + Clone {
    tracing_subscriber::filter::filter_fn(|metadata| {
        !(metadata.is_span() && metadata.target().starts_with("rumqttd"))
    })
}

fn router_warnings<S>() -> impl Filter<S> {
    Targets::new().with_target("rumqttd::router", Level::WARN)
}

struct CursorJumps;

impl<S: Subscriber> Layer<S> for CursorJumps {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        // The jump warning is the router's only one that carries a `start_cursor` field.
        if event.metadata().fields().field("start_cursor").is_some() {
            JUMPS.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().router_skips.inc();
            wake().notify_one();
        }
    }
}

/// Logs the running total of cursor jumps while they happen, until `shutdown`.
pub(crate) async fn report(mut shutdown: watch::Receiver<bool>) {
    let mut reported = count();
    loop {
        tokio::select! {
            () = super::stopped(&mut shutdown) => return,
            () = wake().notified() => {}
        }
        let total = count();
        if total > reported {
            tracing::warn!(
                total,
                new = total - reported,
                "the router skipped messages for subscribers that fell behind its in-memory log \
                 (broker.max_segment_size x max_segment_count); they were not delivered"
            );
            reported = total;
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}
