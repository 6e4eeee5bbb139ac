//! The table of control operations: everything the CLI knows about each AWS IoT–shaped command.
//!
//! One [`Operation`] entry gives a command its kebab-case name (`delete-job`), its PascalCase wire name
//! (`DeleteJob`, the last segment of the request topic), its request parameters and the shape of its
//! response. Everything else is derived from the entry: the clap subcommand and its flags ([`super::args`]),
//! the `--cli-input-json` validation ([`super::input`]), both `--generate-cli-skeleton` outputs and the
//! field order of printed responses ([`super::json`]). Adding a sibling command is one more entry in
//! [`OPERATIONS`], named by its [`control::op`](crate::control::op) constant.
//!
//! Parameter names are the boto3 (camelCase) names; the CLI flag is their kebab-case form
//! ([`Param::flag`]), as in the AWS CLI: `jobId` ↔ `--job-id`.

use crate::control::op;

/// The type of a value, in the vocabulary of botocore shapes; [`Shape::Struct`] and friends nest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    String,
    Boolean,
    Integer,
    /// An epoch-seconds number on the wire; the skeleton shows it as the AWS CLI does.
    Timestamp,
    List(&'static Shape),
    /// A string-keyed map with values of one shape (the skeleton shows one `"KeyName"` entry).
    Map(&'static Shape),
    /// An object with known fields, in the order the AWS CLI prints them.
    Struct(&'static [(&'static str, Shape)]),
}

impl Shape {
    /// How error messages name the type (`string`, `boolean`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            Shape::String => "string",
            Shape::Boolean => "boolean",
            Shape::Integer => "integer",
            Shape::Timestamp => "timestamp",
            Shape::List(_) => "list",
            Shape::Map(_) | Shape::Struct(_) => "structure",
        }
    }
}

/// One request parameter of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The boto3 name, also the JSON key on the wire and in `--cli-input-json`.
    pub name: &'static str,
    pub shape: Shape,
    /// Required parameters are checked after `--cli-input-json` and the flags are merged.
    pub required: bool,
    /// One line for `--help`.
    pub help: &'static str,
    /// Another long flag for it, shorter than the boto3 name's (`--route` for `--route-name`).
    pub alias: Option<&'static str>,
}

impl Param {
    /// The long flag without dashes: `jobId` → `job-id`.
    pub fn flag(&self) -> String {
        kebab_case(self.name)
    }
}

/// One control operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// The subcommand: `delete-job`.
    pub command: &'static str,
    /// The wire name, last segment of `$sprig/control/{clientId}/{Operation}`: `DeleteJob`.
    pub name: &'static str,
    /// One line for `sprig --help`.
    pub about: &'static str,
    pub params: &'static [Param],
    /// The response shape; `None` when the operation returns nothing (the CLI then prints nothing).
    pub output: Option<Shape>,
}

impl Operation {
    /// The operation whose subcommand is `command`.
    pub fn find(command: &str) -> Option<&'static Operation> {
        OPERATIONS.iter().find(|op| op.command == command)
    }

    pub fn param(&self, name: &str) -> Option<&'static Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Whether the command takes `--wait` (not a request parameter): DeleteJob's waits, once the request
    /// is accepted, until the job is gone (see `super::wait`).
    pub fn waits(&self) -> bool {
        self.name == op::DELETE_JOB
    }
}

/// `jobId` → `job-id`.
pub fn kebab_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

const fn param(name: &'static str, shape: Shape, help: &'static str) -> Param {
    Param {
        name,
        shape,
        required: false,
        help,
        alias: None,
    }
}

const fn required(name: &'static str, shape: Shape, help: &'static str) -> Param {
    Param {
        name,
        shape,
        required: true,
        help,
        alias: None,
    }
}

const STRINGS: Shape = Shape::List(&Shape::String);

const JOB_ID: Param = required("jobId", Shape::String, "The unique identifier of the job.");
const NAMESPACE_ID: Param = param(
    "namespaceId",
    Shape::String,
    "The namespace of the job ([a-zA-Z0-9_-]+), for example aws-gg-deployment.",
);
const THING_NAME: Param = required(
    "thingName",
    Shape::String,
    "The name of the thing the job runs on.",
);
const MAX_RESULTS: Param = param(
    "maxResults",
    Shape::Integer,
    "The maximum number of results to return at one time.",
);
const NEXT_TOKEN: Param = param(
    "nextToken",
    Shape::String,
    "The token to retrieve the next set of results.",
);

/// The response of CreateJob and CancelJob.
const JOB_REF: Shape = Shape::Struct(&[
    ("jobArn", Shape::String),
    ("jobId", Shape::String),
    ("description", Shape::String),
]);

const JOB_PROCESS_DETAILS: Shape = Shape::Struct(&[
    ("processingTargets", STRINGS),
    ("numberOfCanceledThings", Shape::Integer),
    ("numberOfSucceededThings", Shape::Integer),
    ("numberOfFailedThings", Shape::Integer),
    ("numberOfRejectedThings", Shape::Integer),
    ("numberOfQueuedThings", Shape::Integer),
    ("numberOfInProgressThings", Shape::Integer),
    ("numberOfRemovedThings", Shape::Integer),
    ("numberOfTimedOutThings", Shape::Integer),
]);

const JOB: Shape = Shape::Struct(&[
    ("jobArn", Shape::String),
    ("jobId", Shape::String),
    ("targetSelection", Shape::String),
    ("status", Shape::String),
    ("forceCanceled", Shape::Boolean),
    ("reasonCode", Shape::String),
    ("comment", Shape::String),
    ("targets", STRINGS),
    ("description", Shape::String),
    ("createdAt", Shape::Timestamp),
    ("lastUpdatedAt", Shape::Timestamp),
    ("completedAt", Shape::Timestamp),
    ("jobProcessDetails", JOB_PROCESS_DETAILS),
    ("namespaceId", Shape::String),
]);

const JOB_SUMMARY: Shape = Shape::Struct(&[
    ("jobArn", Shape::String),
    ("jobId", Shape::String),
    ("thingGroupId", Shape::String),
    ("targetSelection", Shape::String),
    ("status", Shape::String),
    ("createdAt", Shape::Timestamp),
    ("lastUpdatedAt", Shape::Timestamp),
    ("completedAt", Shape::Timestamp),
]);

const STATUS_DETAILS: Shape = Shape::Struct(&[("detailsMap", Shape::Map(&Shape::String))]);

const JOB_EXECUTION: Shape = Shape::Struct(&[
    ("jobId", Shape::String),
    ("status", Shape::String),
    ("forceCanceled", Shape::Boolean),
    ("statusDetails", STATUS_DETAILS),
    ("thingArn", Shape::String),
    ("queuedAt", Shape::Timestamp),
    ("startedAt", Shape::Timestamp),
    ("lastUpdatedAt", Shape::Timestamp),
    ("executionNumber", Shape::Integer),
    ("versionNumber", Shape::Integer),
    ("approximateSecondsBeforeTimedOut", Shape::Integer),
]);

const JOB_EXECUTION_SUMMARY: Shape = Shape::Struct(&[
    ("status", Shape::String),
    ("queuedAt", Shape::Timestamp),
    ("startedAt", Shape::Timestamp),
    ("lastUpdatedAt", Shape::Timestamp),
    ("executionNumber", Shape::Integer),
    ("retryAttempt", Shape::Integer),
]);

/// Every control operation the CLI offers, in `sprig --help` order.
pub static OPERATIONS: &[Operation] = &[
    Operation {
        command: "create-job",
        name: op::CREATE_JOB,
        about: "Creates a job that runs on the target things",
        params: &[
            JOB_ID,
            required(
                "targets",
                STRINGS,
                "The things to run the job on: thing names or thing ARNs.",
            ),
            param(
                "document",
                Shape::String,
                "The job document, JSON (or file://PATH to read it from a file).",
            ),
            param(
                "description",
                Shape::String,
                "A short description of the job.",
            ),
            param(
                "targetSelection",
                Shape::String,
                "SNAPSHOT (the default) or CONTINUOUS.",
            ),
            NAMESPACE_ID,
        ],
        output: Some(JOB_REF),
    },
    Operation {
        command: "delete-job",
        name: op::DELETE_JOB,
        about: "Deletes a job and its related job executions",
        params: &[
            JOB_ID,
            param(
                "force",
                Shape::Boolean,
                "Delete a job that is IN_PROGRESS (default: only COMPLETED or CANCELED jobs).",
            ),
            NAMESPACE_ID,
        ],
        output: None,
    },
    Operation {
        command: "delete-job-execution",
        name: op::DELETE_JOB_EXECUTION,
        about: "Deletes a job execution",
        params: &[
            JOB_ID,
            THING_NAME,
            required(
                "executionNumber",
                Shape::Integer,
                "The execution to delete, as describe-job-execution shows it.",
            ),
            param(
                "force",
                Shape::Boolean,
                "Delete an execution that is QUEUED or IN_PROGRESS (default: only a terminal one).",
            ),
            NAMESPACE_ID,
        ],
        output: None,
    },
    Operation {
        command: "describe-job",
        name: op::DESCRIBE_JOB,
        about: "Describes a job",
        params: &[JOB_ID],
        output: Some(Shape::Struct(&[
            ("documentSource", Shape::String),
            ("job", JOB),
        ])),
    },
    Operation {
        command: "get-job-document",
        name: op::GET_JOB_DOCUMENT,
        about: "Gets a job document",
        params: &[
            JOB_ID,
            param(
                "beforeSubstitution",
                Shape::Boolean,
                "The document before substitution (sprig's documents have none: the same document).",
            ),
        ],
        output: Some(Shape::Struct(&[("document", Shape::String)])),
    },
    Operation {
        command: "update-job",
        name: op::UPDATE_JOB,
        about: "Updates supported fields of the specified job",
        params: &[
            JOB_ID,
            param(
                "description",
                Shape::String,
                "A short description of the job.",
            ),
            NAMESPACE_ID,
        ],
        output: None,
    },
    Operation {
        command: "list-jobs",
        name: op::LIST_JOBS,
        about: "Lists jobs",
        params: &[
            param(
                "status",
                Shape::String,
                "IN_PROGRESS, CANCELED, COMPLETED, DELETION_IN_PROGRESS or SCHEDULED.",
            ),
            param("targetSelection", Shape::String, "SNAPSHOT or CONTINUOUS."),
            MAX_RESULTS,
            NEXT_TOKEN,
            NAMESPACE_ID,
        ],
        output: Some(Shape::Struct(&[
            ("jobs", Shape::List(&JOB_SUMMARY)),
            ("nextToken", Shape::String),
        ])),
    },
    Operation {
        command: "cancel-job",
        name: op::CANCEL_JOB,
        about: "Cancels a job",
        params: &[
            JOB_ID,
            param(
                "reasonCode",
                Shape::String,
                "A code that says why the job was canceled.",
            ),
            param(
                "comment",
                Shape::String,
                "A comment that says why the job was canceled.",
            ),
            param(
                "force",
                Shape::Boolean,
                "Also cancel IN_PROGRESS executions (default: only QUEUED ones).",
            ),
        ],
        output: Some(JOB_REF),
    },
    Operation {
        command: "cancel-job-execution",
        name: op::CANCEL_JOB_EXECUTION,
        about: "Cancels the execution of a job for a given thing",
        params: &[
            JOB_ID,
            THING_NAME,
            param(
                "force",
                Shape::Boolean,
                "Also cancel an IN_PROGRESS execution (default: only a QUEUED one).",
            ),
            param(
                "expectedVersion",
                Shape::Integer,
                "The execution's current version; refused if it has changed.",
            ),
            param(
                "statusDetails",
                Shape::Map(&Shape::String),
                "Status details to record, JSON: {\"key\": \"value\"} (at most 10).",
            ),
        ],
        output: None,
    },
    Operation {
        command: "describe-job-execution",
        name: op::DESCRIBE_JOB_EXECUTION,
        about: "Describes a job execution",
        params: &[
            JOB_ID,
            THING_NAME,
            param(
                "executionNumber",
                Shape::Integer,
                "Which execution of the job on this thing (default: the latest).",
            ),
        ],
        output: Some(Shape::Struct(&[("execution", JOB_EXECUTION)])),
    },
    Operation {
        command: "list-job-executions-for-job",
        name: op::LIST_JOB_EXECUTIONS_FOR_JOB,
        about: "Lists the job executions of a job",
        params: &[
            JOB_ID,
            param(
                "status",
                Shape::String,
                "QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED or CANCELED.",
            ),
            MAX_RESULTS,
            NEXT_TOKEN,
        ],
        output: Some(Shape::Struct(&[
            (
                "executionSummaries",
                Shape::List(&Shape::Struct(&[
                    ("thingArn", Shape::String),
                    ("jobExecutionSummary", JOB_EXECUTION_SUMMARY),
                ])),
            ),
            ("nextToken", Shape::String),
        ])),
    },
    Operation {
        command: "list-job-executions-for-thing",
        name: op::LIST_JOB_EXECUTIONS_FOR_THING,
        about: "Lists the job executions of a thing",
        params: &[
            required("thingName", Shape::String, "The thing name."),
            param(
                "status",
                Shape::String,
                "QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED or CANCELED.",
            ),
            NAMESPACE_ID,
            MAX_RESULTS,
            NEXT_TOKEN,
            param("jobId", Shape::String, "Only the execution of this job."),
        ],
        output: Some(Shape::Struct(&[
            (
                "executionSummaries",
                Shape::List(&Shape::Struct(&[
                    ("jobId", Shape::String),
                    ("jobExecutionSummary", JOB_EXECUTION_SUMMARY),
                ])),
            ),
            ("nextToken", Shape::String),
        ])),
    },
    Operation {
        command: "list-recoveries",
        name: op::LIST_RECOVERIES,
        about:
            "Lists the durable recoveries of devices whose job execution was interrupted (sprig)",
        params: &[
            param("thingName", Shape::String, "Only this device's recoveries."),
            param("jobId", Shape::String, "Only recoveries for this job."),
            param("status", Shape::String, "PENDING, RECOVERED or FAILED."),
            MAX_RESULTS,
            NEXT_TOKEN,
        ],
        output: Some(Shape::Struct(&[
            ("recoveries", Shape::List(&RECOVERY)),
            ("nextToken", Shape::String),
        ])),
    },
    Operation {
        command: "describe-recovery",
        name: op::DESCRIBE_RECOVERY,
        about: "Describes one durable recovery (sprig)",
        params: &[required(
            "recoveryId",
            Shape::String,
            "The recovery's id, as list-recoveries shows it.",
        )],
        output: Some(Shape::Struct(&[("recovery", RECOVERY)])),
    },
    Operation {
        command: "list-plugins",
        name: op::LIST_PLUGINS,
        about: "Lists the recovery routes' plugins and their state (sprig)",
        params: &[MAX_RESULTS, NEXT_TOKEN],
        output: Some(Shape::Struct(&[
            ("plugins", Shape::List(&PLUGIN)),
            ("nextToken", Shape::String),
        ])),
    },
    Operation {
        command: "describe-plugin",
        name: op::DESCRIBE_PLUGIN,
        about: "Describes one recovery route's plugin (sprig)",
        params: &[ROUTE_NAME],
        output: Some(Shape::Struct(&[("plugin", PLUGIN)])),
    },
    Operation {
        command: "reset-plugin",
        name: op::RESET_PLUGIN,
        about: "Resets a recovery route's plugin: a new host or instance, now (sprig)",
        params: &[ROUTE_NAME],
        output: Some(Shape::Struct(&[("plugin", PLUGIN)])),
    },
    Operation {
        command: "describe-gateway",
        name: op::DESCRIBE_GATEWAY,
        about: "Describes the gateway: uptime, connections, jobs, deletions, recoveries, store, uplink (sprig; `sprig status` prints it as a table)",
        params: &[],
        output: Some(GATEWAY),
    },
];

/// Counts by status (or kind, or state): `{"IN_PROGRESS": 2, …}`.
const COUNTS: Shape = Shape::Map(&Shape::Integer);

/// DescribeGateway's response, as `sprig describe-gateway` prints it (`sprig status` makes a table of it).
const GATEWAY: Shape = Shape::Struct(&[
    ("gatewayId", Shape::String),
    ("version", Shape::String),
    ("startedAt", Shape::Timestamp),
    ("uptimeSeconds", Shape::Integer),
    ("connections", COUNTS),
    ("jobs", COUNTS),
    (
        "jobsByNamespace",
        Shape::List(&Shape::Struct(&[
            ("namespaceId", Shape::String),
            ("jobs", COUNTS),
        ])),
    ),
    ("executions", COUNTS),
    (
        "deletions",
        Shape::List(&Shape::Struct(&[
            ("jobId", Shape::String),
            ("namespaceId", Shape::String),
            ("requestedAt", Shape::Timestamp),
            ("executionsRemoved", Shape::Integer),
            ("executionsRemaining", Shape::Integer),
        ])),
    ),
    ("recoveries", COUNTS),
    (
        "store",
        Shape::Struct(&[
            ("sizeBytes", Shape::Integer),
            ("jobs", Shape::Integer),
            ("executions", Shape::Integer),
        ]),
    ),
    (
        "uplink",
        Shape::Struct(&[
            ("connected", Shape::Boolean),
            ("spoolMessages", Shape::Integer),
            ("spoolBytes", Shape::Integer),
        ]),
    ),
]);

const ROUTE_NAME: Param = Param {
    alias: Some("route"),
    ..required(
        "routeName",
        Shape::String,
        "The [[recovery]] route's name, as list-plugins shows it.",
    )
};

/// A route's plugin as `list-plugins`, `describe-plugin` and `reset-plugin` print it.
const PLUGIN: Shape = Shape::Struct(&[
    ("routeName", Shape::String),
    ("things", Shape::String),
    ("namespaceId", Shape::String),
    ("isolation", Shape::String),
    (
        "plugin",
        Shape::Struct(&[
            ("path", Shape::String),
            ("name", Shape::String),
            ("version", Shape::String),
            ("sdkVersion", Shape::String),
        ]),
    ),
    ("budgetMs", Shape::Integer),
    ("state", Shape::String),
    ("stateReason", Shape::String),
    ("stateSince", Shape::Timestamp),
    ("retryAt", Shape::Timestamp),
    ("hostPid", Shape::Integer),
    ("callStartedAt", Shape::Timestamp),
    ("hostsLostInARow", Shape::Integer),
    ("replacementsLeft", Shape::Integer),
    ("abandonedThreads", Shape::Integer),
    (
        "stats",
        Shape::Struct(&[
            ("calls", Shape::Integer),
            ("succeeded", Shape::Integer),
            ("failed", Shape::Integer),
            ("panicked", Shape::Integer),
            ("garbage", Shape::Integer),
            ("timedOut", Shape::Integer),
            ("crashed", Shape::Integer),
            ("quarantined", Shape::Integer),
            ("restarts", Shape::Integer),
        ]),
    ),
    (
        "lastFailure",
        Shape::Struct(&[
            ("at", Shape::Timestamp),
            ("kind", Shape::String),
            ("message", Shape::String),
        ]),
    ),
]);

/// A recovery as `list-recoveries` and `describe-recovery` print it.
const RECOVERY: Shape = Shape::Struct(&[
    ("recoveryId", Shape::String),
    ("thingName", Shape::String),
    ("jobId", Shape::String),
    ("namespaceId", Shape::String),
    ("routeName", Shape::String),
    ("reason", Shape::String),
    ("status", Shape::String),
    ("executionStatus", Shape::String),
    ("attempts", Shape::Integer),
    ("failures", Shape::Integer),
    ("lastError", Shape::String),
    ("recordedStatusDetails", Shape::Map(&Shape::String)),
    ("createdAt", Shape::Timestamp),
    ("lastUpdatedAt", Shape::Timestamp),
    ("nextAttemptAt", Shape::Timestamp),
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_the_kebab_case_of_the_boto3_names() {
        assert_eq!(kebab_case("jobId"), "job-id");
        assert_eq!(
            kebab_case("listJobExecutionsForJob"),
            "list-job-executions-for-job"
        );
        assert_eq!(kebab_case("force"), "force");
    }

    #[test]
    fn commands_and_wire_names_agree() {
        for op in OPERATIONS {
            let pascal_as_kebab = kebab_case(op.name);
            assert_eq!(format!("-{}", op.command), pascal_as_kebab, "{}", op.name);
            let mut names: Vec<_> = op.params.iter().map(|p| p.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                op.params.len(),
                "{}: duplicate parameter",
                op.name
            );
        }
    }
}
