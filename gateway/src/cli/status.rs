//! `sprig status`: the running gateway on one screen, for a person at it.
//!
//! One DescribeGateway request (the JSON that `sprig describe-gateway` prints), laid out as a few lines
//! and two small tables: the gateway and its uptime, connections, store and uplink; jobs by status per
//! namespace; executions and recoveries by status (the ones with any); the deletions under way with
//! their progress. [`render`] is the layout alone, from the response, so it is tested without a gateway.

use std::fmt::Write;

use clap::Args;
use serde_json::Value;

use super::args::ConnectionArgs;
use super::operations::Operation;
use super::{input, Failure};
use crate::model::{ExecutionStatus, JobStatus};

/// `sprig status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten, next_help_heading = "Connection")]
    pub connection: ConnectionArgs,
}

/// Asks the gateway and returns the screen to print.
pub fn run(args: &StatusArgs) -> Result<Option<String>, Failure> {
    let op = Operation::find("describe-gateway").expect("describe-gateway is in the table");
    let response = super::call(op, input::Request::new(), &args.connection)?;
    Ok(Some(render(&response)))
}

/// The screen for a DescribeGateway response.
pub fn render(gateway: &Value) -> String {
    let mut out = String::new();
    let text = |value: &Value| value.as_str().unwrap_or("?").to_owned();
    let number = |value: &Value| value.as_u64().unwrap_or_default();
    let _ = writeln!(
        out,
        "gateway      {} (sprig {}), up {}",
        text(&gateway["gatewayId"]),
        text(&gateway["version"]),
        uptime(number(&gateway["uptimeSeconds"])),
    );
    let connections = &gateway["connections"];
    let _ = writeln!(
        out,
        "connections  {}, {}",
        plural(number(&connections["device"]), "device"),
        plural(number(&connections["operator"]), "operator"),
    );
    let store = &gateway["store"];
    let _ = writeln!(
        out,
        "store        {} on disk: {}, {}",
        bytes(number(&store["sizeBytes"])),
        plural(number(&store["jobs"]), "job"),
        plural(number(&store["executions"]), "execution"),
    );
    let uplink = &gateway["uplink"];
    let uplink = if uplink.is_object() {
        let state = if uplink["connected"] == true {
            "connected"
        } else {
            "disconnected"
        };
        format!(
            "{state}, {} spooled ({})",
            plural(number(&uplink["spoolMessages"]), "message"),
            bytes(number(&uplink["spoolBytes"])),
        )
    } else {
        "not configured".to_owned()
    };
    let _ = writeln!(out, "uplink       {uplink}");

    let _ = writeln!(out);
    out.push_str(&jobs_table(gateway));
    let executions = ExecutionStatus::ALL.map(ExecutionStatus::as_str);
    let _ = writeln!(
        out,
        "executions   {}",
        counts(&gateway["executions"], &executions)
    );
    let _ = writeln!(
        out,
        "recoveries   {}",
        counts(&gateway["recoveries"], &["PENDING", "RECOVERED", "FAILED"])
    );

    let deletions = gateway["deletions"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out);
    if deletions.is_empty() {
        let _ = writeln!(out, "deletions    none in progress");
    } else {
        let mut rows = vec![cells(&[
            "DELETING",
            "NAMESPACE",
            "REMOVED",
            "REMAINING",
            "DONE",
        ])];
        for deletion in &deletions {
            let removed = number(&deletion["executionsRemoved"]);
            let remaining = number(&deletion["executionsRemaining"]);
            let namespace = deletion["namespaceId"].as_str().unwrap_or("-");
            rows.push(vec![
                text(&deletion["jobId"]),
                namespace.to_owned(),
                removed.to_string(),
                remaining.to_string(),
                percent(removed, removed + remaining),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.truncate(out.trim_end().len());
    out
}

/// Jobs by status, one row per namespace (and a total when there is more than one).
fn jobs_table(gateway: &Value) -> String {
    let statuses = JobStatus::ALL.map(JobStatus::as_str);
    let namespaces = gateway["jobsByNamespace"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if namespaces.is_empty() {
        return "jobs         none\n".to_owned();
    }
    let mut rows = vec![std::iter::once("JOBS".to_owned())
        .chain(statuses.iter().map(|s| s.to_string()))
        .collect::<Vec<_>>()];
    let row = |name: &str, jobs: &Value| {
        std::iter::once(name.to_owned())
            .chain(
                statuses
                    .iter()
                    .map(|s| jobs[*s].as_u64().unwrap_or_default().to_string()),
            )
            .collect::<Vec<_>>()
    };
    for namespace in &namespaces {
        let name = namespace["namespaceId"]
            .as_str()
            .unwrap_or("(no namespace)");
        rows.push(row(name, &namespace["jobs"]));
    }
    if namespaces.len() > 1 {
        rows.push(row("total", &gateway["jobs"]));
    }
    table(&rows)
}

/// `NAME n  NAME n` for the names with a count above zero, in the order given; `none` if there is none.
fn counts(counts: &Value, names: &[&str]) -> String {
    let listed: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let count = counts[*name].as_u64().unwrap_or_default();
            (count > 0).then(|| format!("{name} {count}"))
        })
        .collect();
    if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join("  ")
    }
}

fn cells(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}

/// Columns two spaces apart: the first left-aligned, the others (numbers) right-aligned, except a second
/// column of names (the deletions' namespace).
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or_default();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or_default()
        })
        .collect();
    let numeric = |c: usize| {
        rows.iter().skip(1).all(|r| {
            r.get(c)
                .is_none_or(|cell| cell.ends_with('%') || cell.parse::<u64>().is_ok())
        })
    };
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let width = widths[c];
            if c > 0 && numeric(c) {
                let _ = write!(line, "{cell:>width$}");
            } else {
                let _ = write!(line, "{cell:<width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `45s`, `3m 12s`, `2h 05m`, `4d 03h`.
fn uptime(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs:02}s"),
        (0, _, _) => format!("{hours}h {minutes:02}m"),
        _ => format!("{days}d {hours:02}h"),
    }
}

/// `512 B`, `1.5 KiB`, `12.3 MiB`, `2.0 GiB`.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `part` of `whole`, rounded down: `100%` only when done.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "100%".to_owned();
    }
    format!("{}%", part * 100 / whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_busy_gateway_fits_on_a_few_lines() {
        let response = json!({
            "gatewayId": "edge-7",
            "version": "0.1.0",
            "startedAt": 1_700_000_000.0,
            "uptimeSeconds": 7_505,
            "connections": {"device": 12, "operator": 1},
            "jobs": {"IN_PROGRESS": 3, "CANCELED": 1, "COMPLETED": 4, "DELETION_IN_PROGRESS": 1},
            "jobsByNamespace": [
                {"jobs": {"IN_PROGRESS": 1, "CANCELED": 0, "COMPLETED": 4, "DELETION_IN_PROGRESS": 0}},
                {"namespaceId": "aws-gg-deployment",
                 "jobs": {"IN_PROGRESS": 2, "CANCELED": 1, "COMPLETED": 0, "DELETION_IN_PROGRESS": 1}}
            ],
            "executions": {"QUEUED": 30, "IN_PROGRESS": 2, "SUCCEEDED": 17, "FAILED": 0},
            "deletions": [{"jobId": "fw-41", "namespaceId": "aws-gg-deployment", "requestedAt": 1.0,
                           "executionsRemoved": 1500, "executionsRemaining": 500}],
            "recoveries": {"PENDING": 1, "RECOVERED": 0, "FAILED": 2},
            "store": {"sizeBytes": 3_250_000, "jobs": 9, "executions": 549},
            "uplink": {"connected": true, "spoolMessages": 0, "spoolBytes": 4096}
        });
        let expected = "\
gateway      edge-7 (sprig 0.1.0), up 2h 05m
connections  12 devices, 1 operator
store        3.1 MiB on disk: 9 jobs, 549 executions
uplink       connected, 0 messages spooled (4.0 KiB)

JOBS               IN_PROGRESS  CANCELED  COMPLETED  DELETION_IN_PROGRESS
(no namespace)               1         0          4                     0
aws-gg-deployment            2         1          0                     1
total                        3         1          4                     1
executions   QUEUED 30  IN_PROGRESS 2  SUCCEEDED 17
recoveries   PENDING 1  FAILED 2

DELETING  NAMESPACE          REMOVED  REMAINING  DONE
fw-41     aws-gg-deployment     1500        500   75%";
        assert_eq!(render(&response), expected);
    }

    #[test]
    fn an_idle_gateway_says_none() {
        let response = json!({
            "gatewayId": "sprig", "version": "0.1.0", "uptimeSeconds": 4,
            "connections": {"device": 0, "operator": 1},
            "jobs": {}, "jobsByNamespace": [], "executions": {}, "deletions": [],
            "recoveries": {"PENDING": 0},
            "store": {"sizeBytes": 100, "jobs": 0, "executions": 0}
        });
        let screen = render(&response);
        for line in [
            "gateway      sprig (sprig 0.1.0), up 4s",
            "connections  0 devices, 1 operator",
            "store        100 B on disk: 0 jobs, 0 executions",
            "uplink       not configured",
            "jobs         none",
            "executions   none",
            "recoveries   none",
            "deletions    none in progress",
        ] {
            assert!(screen.lines().any(|l| l == line), "{line:?} in:\n{screen}");
        }
    }

    #[test]
    fn durations_and_sizes_read_as_a_person_says_them() {
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(192), "3m 12s");
        assert_eq!(uptime(3 * 86_400 + 7_200), "3d 02h");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(percent(1, 3), "33%");
        assert_eq!(percent(0, 0), "100%");
    }
}
