//! `sprig delete-job … --wait`: DeleteJob, then wait until the job is gone.
//!
//! Over one operator connection ([`Session`]): DescribeJob first, for how many executions the job has
//! (the bar's length); DeleteJob; then DescribeJob every [`POLL`] until the gateway says
//! ResourceNotFoundException, the job and its executions gone. The executions still to remove are the
//! counts of DescribeJob's `jobProcessDetails`. On a terminal (stderr) an indicatif bar shows the
//! executions removed; otherwise nothing is printed, as for a plain DeleteJob, and the exit status tells
//! (0 once the job is gone). A rejected DeleteJob is its usual error (254); a gateway lost while waiting
//! is 255, with what to run to see the deletion finish, since it resumes when the gateway is back.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::Session;
use super::connect::Target;
use super::input::Request;
use super::operations::Operation;
use super::Failure;
use crate::model::JobStatus;

/// How often DescribeJob is asked while the job is being deleted.
pub const POLL: Duration = Duration::from_millis(200);

/// Sends `request` as DeleteJob (`op`), then waits until its job is gone.
pub async fn delete_and_wait(
    target: &Target,
    op: &'static Operation,
    request: Request,
    timeout: Duration,
) -> Result<(), Failure> {
    let describe = Operation::find("describe-job").expect("describe-job is in the table");
    let job_id = request
        .get("jobId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut describe_request = Request::new();
    describe_request.insert("jobId".to_owned(), Value::String(job_id.clone()));

    let mut session = Session::connect(target, timeout).await?;
    // What the job has before its deletion, if it can be seen (if not, DeleteJob says why).
    let total = match session.call(describe, describe_request.clone()).await {
        Ok(described) => remaining(&described),
        Err(Failure::Service { .. }) => None,
        Err(other) => return Err(other),
    };
    session.call(op, request).await?;
    let bar = Bar::new(&job_id, total);
    let outcome = poll_until_gone(&mut session, describe, describe_request, &bar).await;
    match &outcome {
        Ok(()) => bar.done(),
        Err(_) => bar.abandon(),
    }
    session.close().await;
    outcome.map_err(|failure| lost(failure, &job_id))
}

async fn poll_until_gone(
    session: &mut Session<'_>,
    describe: &'static Operation,
    request: Request,
    bar: &Bar,
) -> Result<(), Failure> {
    loop {
        match session.call(describe, request.clone()).await {
            Ok(described) => {
                if described["job"]["status"] != JobStatus::DeletionInProgress.as_str() {
                    // Gone, and its id already used again by a new job.
                    return Ok(());
                }
                if let Some(left) = remaining(&described) {
                    bar.remaining(left);
                }
            }
            Err(Failure::Service { code, .. }) if code == "ResourceNotFoundException" => {
                return Ok(())
            }
            // Asked too often (by this operator's other clients too): ask again later.
            Err(Failure::Service { code, .. }) if code == "ThrottlingException" => {}
            Err(other) => return Err(other),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The executions a DescribeJob response counts (`jobProcessDetails`).
fn remaining(described: &Value) -> Option<u64> {
    let details = described["job"]["jobProcessDetails"].as_object()?;
    Some(
        details
            .iter()
            .filter(|(name, _)| name.starts_with("numberOf"))
            .filter_map(|(_, count)| count.as_u64())
            .sum(),
    )
}

/// What failed while waiting, said with what to do.
fn lost(failure: Failure, job_id: &str) -> Failure {
    match failure {
        Failure::Other(why) => Failure::Other(format!(
            "{why}\nwhile waiting for job {job_id} to be deleted: its deletion goes on, and resumes \
             if the gateway restarts; `sprig describe-job --job-id {job_id}` says when it is gone"
        )),
        other => other,
    }
}

/// The progress bar, drawn only on a terminal.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(job_id: &str, total: Option<u64>) -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(total, target);
        let style = ProgressStyle::with_template(
            "{spinner} deleting {prefix}: [{bar:30}] {pos}/{len} executions removed ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(job_id.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Bar { bar }
    }

    /// `left` executions are still to remove.
    fn remaining(&self, left: u64) {
        // Without a count before the deletion, the first one seen is the whole.
        let total = match self.bar.length() {
            Some(total) if total >= left => total,
            _ => {
                self.bar.set_length(left);
                left
            }
        };
        self.bar.set_position(total - left);
    }

    fn done(&self) {
        if let Some(total) = self.bar.length() {
            self.bar.set_position(total);
        }
        let style =
            ProgressStyle::with_template("{prefix} deleted: {pos} executions removed in {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        self.bar.set_style(style);
        self.bar.finish();
    }

    fn abandon(&self) {
        self.bar.abandon();
    }
}
