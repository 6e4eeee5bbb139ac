//! What sled 0.34 writes to the disk per write, as the kernel counts it (`write_bytes` of this process):
//! the floor under every figure of the wear benchmark (`cargo bench -p sprig-tests --bench wear`).
//!
//! For values of a few sizes and sled flush intervals (`flush_every_ms`, as the store sets it), on a
//! database opened as the store opens its own: a transaction over two trees (a record and a counter, as
//! every store change writes a record and the store's account), alone (the next one a flush interval
//! and a bit later: a device that updates now and then) or back to back (a fleet updating at once); and
//! plain inserts (no atomicity across trees), alone or back to back. `SPRIG_BENCH_WRITES` (default 10) writes alone per row, 20 times as many back
//! to back. The data lives in a temporary directory: `TMPDIR` picks the file system. Run with
//! `cargo bench -p sprig-gateway --bench sled_writes`.

use std::time::Duration;

use sled::Transactional;
use sprig_test_support::settings::env_or;

/// This process's `write_bytes` (`/proc/self/io`): bytes it caused to be written to storage.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// How a row writes.
#[derive(Clone, Copy)]
enum Kind {
    /// A transaction over two trees, each a flush interval after the last.
    TransactionAlone,
    /// Transactions over two trees, one after the other, then one flush.
    TransactionsBackToBack,
    /// A plain insert, each a flush interval after the last.
    InsertAlone,
    /// Plain inserts, one after the other, then one flush.
    InsertsBackToBack,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::TransactionAlone => "transaction, alone",
            Kind::TransactionsBackToBack => "transactions, back to back",
            Kind::InsertAlone => "insert, alone",
            Kind::InsertsBackToBack => "inserts, back to back",
        }
    }
}

/// Bytes written per write of `kind`, `count` writes of `value_size` bytes, with sled flushing every
/// `flush_ms`.
fn per_write(kind: Kind, value_size: usize, flush_ms: u64, count: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(32 << 20)
        .flush_every_ms(Some(flush_ms))
        .open()
        .unwrap();
    let records = db.open_tree("records").unwrap();
    let account: &sled::Tree = &db;
    let value = vec![7u8; value_size];
    // Settle what opening wrote.
    db.flush().unwrap();
    std::thread::sleep(Duration::from_millis(flush_ms + 200));
    let pause = Duration::from_millis(flush_ms + 100);
    let before = written();
    for i in 0..count {
        let key = (i as u64 % 64).to_be_bytes();
        match kind {
            Kind::TransactionAlone | Kind::TransactionsBackToBack => {
                (&records, account)
                    .transaction(|(records, account)| {
                        records.insert(&key, value.as_slice())?;
                        account.insert(b"account", &(i as u64).to_be_bytes())?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .unwrap();
            }
            Kind::InsertAlone | Kind::InsertsBackToBack => {
                records.insert(key, value.as_slice()).unwrap();
            }
        }
        if matches!(kind, Kind::TransactionAlone | Kind::InsertAlone) {
            std::thread::sleep(pause);
        }
    }
    db.flush().unwrap();
    std::thread::sleep(pause);
    (written() - before) as f64 / count as f64
}

fn main() {
    let alone = env_or("SPRIG_BENCH_WRITES", 10).max(1);
    let probe = {
        let dir = tempfile::tempdir().unwrap();
        let before = written();
        std::fs::write(dir.path().join("probe"), [1u8; 100]).unwrap();
        std::fs::File::open(dir.path().join("probe"))
            .unwrap()
            .sync_all()
            .unwrap();
        written() > before
    };
    if !probe {
        eprintln!(
            "write_bytes did not move for a write and an fsync in {}: the kernel does not count this \
             file system's writes (a tmpfs?). Set TMPDIR to a disk-backed one.",
            std::env::temp_dir().display()
        );
        std::process::exit(1);
    }
    println!(
        "sled 0.34: bytes written to the disk per write (write_bytes), in {}",
        std::env::temp_dir().display()
    );
    println!("| write | value | flush_every_ms | writes | bytes per write |");
    println!("|---|---|---|---|---|");
    for value_size in [100, 1_000, 16_000] {
        for flush_ms in [500, 2_000] {
            for kind in [
                Kind::TransactionAlone,
                Kind::TransactionsBackToBack,
                Kind::InsertAlone,
                Kind::InsertsBackToBack,
            ] {
                let count = match kind {
                    Kind::TransactionsBackToBack | Kind::InsertsBackToBack => 20 * alone,
                    _ => alone,
                };
                let bytes = per_write(kind, value_size, flush_ms, count);
                println!(
                    "| {} | {value_size} B | {flush_ms} | {count} | {bytes:.0} |",
                    kind.name()
                );
            }
        }
    }
}
