//! The engine of the procedures (DESIGN.md §4): a procedure is a list of steps, each one also a
//! command of its own. Before a run: its preconditions, refused with the reason. Each step:
//! skipped when its check says it is already done (steps are idempotent), else run, then checked
//! again — a step that did not take effect stops the run. Progress is one line per step. The run's
//! state is kept in `DIR/.tandem/runs/<procedure>.json` after every step, so a run stopped at any
//! moment (the CLI killed) resumes where it stopped; every run, finished or failed, is appended
//! to the deployment's audit log `DIR/audit.log` (one JSON line: who, when, steps, result, data
//! loss).

use crate::deployment::Deployment;
use crate::output::Output;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Whether a step's effect holds (`Some(report)`), from the run so far.
pub type Check<'a> = Box<dyn Fn(&RunState) -> anyhow::Result<Option<Value>> + 'a>;
/// Does a step; its report. A report `{"skipped": WHY}` says the step could not apply and the
/// procedure goes on without it (a mirror whose node is lost too): recorded as skipped, not
/// verified. A `note` in a report is shown with the step's outcome (what is left to do).
pub type Act<'a> = Box<dyn Fn(&RunState) -> anyhow::Result<Value> + 'a>;

/// One step: what it does, the command an operator would run for it, how to tell it is done,
/// and how to do it. `check` answers `Some(report)` once the step's effect holds.
pub struct Step<'a> {
    pub title: String,
    pub command: String,
    pub check: Check<'a>,
    pub run: Act<'a>,
    /// Whether `check` must hold after `run` (false for steps whose command verifies itself,
    /// such as a copy that is done when nothing is left to copy).
    pub verify: bool,
    /// Whether its effect can be undone between two runs (an operator's command, a node
    /// restarted): a resumed run checks it again, and does it again when it no longer holds,
    /// rather than skip it on the record's word.
    pub recheck: bool,
}

/// What a run keeps between steps (and across a crash of the CLI).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub procedure: String,
    pub user: String,
    pub started_ms: i64,
    /// Reports of the steps done, in order.
    pub steps: Vec<StepRecord>,
    /// Runs resumed after an interruption.
    pub resumed: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub title: String,
    /// `done` (run now), `already done` (its check held before).
    pub outcome: String,
    pub report: Value,
    pub ms: u64,
}

impl RunState {
    /// The report a step left, for the steps after it.
    pub fn report_of(&self, step: usize) -> Option<&Value> {
        self.steps
            .iter()
            .find(|s| s.step == step)
            .map(|s| &s.report)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Runbook<'a> {
    pub procedure: &'static str,
    pub deployment: &'a Deployment,
    pub steps: Vec<Step<'a>>,
    /// What a run stopped half-way (a step failed, or its resume was refused) leaves for the
    /// users, and the commands that bring service back (the chat pool serving nobody, say):
    /// added to the error. None when there is nothing to add.
    pub stopped: Stopped<'a>,
}

/// What a run stopped half-way leaves, from its record: see `Runbook::stopped`.
pub type Stopped<'a> = Box<dyn Fn(&RunState) -> Option<String> + 'a>;

/// How a run ended.
#[derive(Serialize)]
pub struct Outcome {
    pub run_id: String,
    pub procedure: String,
    pub result: String,
    pub resumed: bool,
    pub steps: Vec<StepRecord>,
    pub seconds: f64,
}

impl<'a> Runbook<'a> {
    pub fn state_file(&self) -> PathBuf {
        self.deployment
            .dir()
            .join(".tandem")
            .join("runs")
            .join(format!("{}.json", self.procedure))
    }

    /// A run in progress (interrupted), if any.
    pub fn in_progress(&self) -> Option<RunState> {
        let bytes = std::fs::read(self.state_file()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, state: &RunState) -> anyhow::Result<()> {
        let file = self.state_file();
        std::fs::create_dir_all(file.parent().expect("a parent"))?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &file).with_context(|| file.display().to_string())
    }

    fn audit(&self, state: &RunState, result: &str, error: Option<&str>, extra: &Value) {
        append_audit(
            self.deployment,
            &AuditLine {
                run_id: &state.run_id,
                procedure: &state.procedure,
                user: &state.user,
                started_ms: state.started_ms,
                ended_ms: now_ms(),
                result,
                error,
                resumed: state.resumed,
                steps: &state.steps,
                report: extra,
            },
        );
    }

    /// Abandons the run in progress, if any: recorded in the audit log as `aborted`, with
    /// `report`, and its state removed, so the next run starts afresh.
    pub fn abandon(&self, report: &Value) {
        let state = self.in_progress().unwrap_or_else(|| {
            let started_ms = now_ms();
            RunState {
                run_id: format!("{}-{started_ms}", self.procedure),
                procedure: self.procedure.to_string(),
                user: operator(),
                started_ms,
                ..RunState::default()
            }
        });
        self.audit(&state, "aborted", None, report);
        let _ = std::fs::remove_file(self.state_file());
    }

    /// The plan: each step, its command, and whether its check already holds. `refused`: the
    /// run would not start, so no step is checked (what a check says of a deployment the
    /// procedure does not apply to means nothing).
    pub fn plan(&self, refused: bool) -> Vec<Value> {
        let state = self.in_progress().unwrap_or_default();
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let recorded = state.steps.iter().any(|r| r.step == i + 1);
                json!({
                    "step": i + 1,
                    "title": s.title,
                    "command": s.command,
                    "state": if recorded {
                        "done (this run)".to_string()
                    } else if refused {
                        "not checked: the run would be refused".to_string()
                    } else {
                        match (s.check)(&state) {
                            Ok(Some(_)) => "already done".to_string(),
                            Ok(None) => "to do".to_string(),
                            Err(e) => format!("cannot check: {e}"),
                        }
                    },
                })
            })
            .collect()
    }

    /// A run in progress that this plan cannot resume: one recorded for other steps (the
    /// topology changed since: a step's number now names another step, and skipping it by its
    /// number would skip what never ran).
    fn foreign_run(&self, state: &RunState) -> Option<String> {
        // Steps are numbered from 1.
        let planned = |n: usize| n.checked_sub(1).and_then(|i| self.steps.get(i));
        let differs = state
            .steps
            .iter()
            .find(|r| planned(r.step).is_none_or(|s| s.title != r.title))?;
        let now = planned(differs.step)
            .map_or("no such step".to_string(), |s| format!("\"{}\"", s.title));
        Some(format!(
            "run {} of {} was made for another plan: its step {} was \"{}\", the plan's is now {now} \
             (the topology changed since it stopped). Resume it with the topology it was made \
             with, or, once the deployment is checked by hand (`tandem status`), remove {} to \
             start a new run",
            state.run_id,
            self.procedure,
            differs.step,
            differs.title,
            self.state_file().display()
        ))
    }

    /// Runs (or resumes) the procedure. `preconditions` are told the run in progress when one
    /// is resumed (None for a fresh run): they check what the steps still to do need. `summary`
    /// turns the final state into the report's extra fields (the data loss, say).
    pub fn run(
        &self,
        out: &Output,
        preconditions: impl FnOnce(Option<&RunState>) -> anyhow::Result<()>,
        summary: impl Fn(&RunState) -> Value,
    ) -> anyhow::Result<(Outcome, Value)> {
        let started = Instant::now();
        let _lock = procedure_lock(self.deployment, self.procedure)?;
        watch_interrupt();
        let (mut state, resumed) = match self.in_progress() {
            Some(mut s) => {
                if let Some(why) = self.foreign_run(&s) {
                    bail!(why);
                }
                if let Err(e) = preconditions(Some(&s)) {
                    return Err(match (self.stopped)(&s) {
                        Some(left) => e.context(format!(
                            "run {} of {} cannot resume: {left}",
                            s.run_id, self.procedure
                        )),
                        None => e,
                    });
                }
                s.resumed += 1;
                out.progress(&format!(
                    "resuming {} run {} after step {}",
                    self.procedure,
                    s.run_id,
                    s.steps.len()
                ));
                // The last step recorded was the last to run, and a step whose effect can be
                // undone may have been since (a node restarted, an operator's command): each
                // is done again when its effect no longer holds, not skipped on the record's
                // word.
                let last = s.steps.last().map(|r| r.step);
                let mut again = Vec::new();
                for r in &s.steps {
                    let step = &self.steps[r.step - 1];
                    if r.outcome.starts_with("skipped") || !(step.recheck || Some(r.step) == last) {
                        continue;
                    }
                    if !matches!((step.check)(&s), Ok(Some(_))) {
                        out.progress(&format!(
                            "[{}/{}] {}: no longer holds since the run stopped; done again",
                            r.step,
                            self.steps.len(),
                            r.title
                        ));
                        again.push(r.step);
                    }
                }
                s.steps.retain(|r| !again.contains(&r.step));
                (s, true)
            }
            None => {
                preconditions(None)?;
                let started_ms = now_ms();
                (
                    RunState {
                        run_id: format!("{}-{started_ms}", self.procedure),
                        procedure: self.procedure.to_string(),
                        user: operator(),
                        started_ms,
                        steps: Vec::new(),
                        resumed: 0,
                    },
                    false,
                )
            }
        };
        self.save(&state)?;
        let total = self.steps.len();
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            if state.steps.iter().any(|r| r.step == n) {
                out.progress(&format!(
                    "[{n}/{total}] {}: done earlier in this run",
                    step.title
                ));
                continue;
            }
            say_when_interrupted(Some(format!(
                "{} interrupted during step {n}/{total} ({}); the steps before it are recorded: \
                 run `tandem {}` again to resume (step {n} is checked first and done again if \
                 it did not take effect)",
                self.procedure,
                step.title,
                self.procedure.replace('-', " ")
            )));
            let t = Instant::now();
            let result = (|| -> anyhow::Result<(String, Value)> {
                if let Some(report) = (step.check)(&state)? {
                    return Ok(("already done".into(), report));
                }
                let report = (step.run)(&state)?;
                if let Some(why) = report["skipped"].as_str() {
                    return Ok((format!("skipped: {why}"), report));
                }
                let done = match report["note"].as_str() {
                    Some(note) => format!("done; {note}"),
                    None => "done".into(),
                };
                if !step.verify {
                    return Ok((done, report));
                }
                match (step.check)(&state)? {
                    Some(checked) => Ok((done, if report.is_null() { checked } else { report })),
                    None => bail!(
                        "the step ran but its effect does not hold (check: {})",
                        step.command
                    ),
                }
            })();
            match result {
                Ok((outcome, report)) => {
                    out.progress(&format!(
                        "[{n}/{total}] {}: {outcome} ({:.1} s)",
                        step.title,
                        t.elapsed().as_secs_f64()
                    ));
                    state.steps.push(StepRecord {
                        step: n,
                        title: step.title.clone(),
                        outcome,
                        report,
                        ms: t.elapsed().as_millis() as u64,
                    });
                    self.save(&state)?;
                }
                Err(e) => {
                    let mut msg = format!(
                        "step {n}/{total} ({}) failed: {e:#}; run `{}` to see why, then run the procedure again: it resumes at this step",
                        step.title, step.command
                    );
                    if let Some(left) = (self.stopped)(&state) {
                        msg.push_str(&format!("; {left}"));
                    }
                    self.audit(&state, "failed", Some(&msg), &summary(&state));
                    bail!(msg);
                }
            }
        }
        say_when_interrupted(None);
        let extra = summary(&state);
        self.audit(&state, "ok", None, &extra);
        let _ = std::fs::remove_file(self.state_file());
        Ok((
            Outcome {
                run_id: state.run_id.clone(),
                procedure: self.procedure.to_string(),
                result: "ok".into(),
                resumed,
                steps: state.steps.clone(),
                seconds: started.elapsed().as_secs_f64(),
            },
            extra,
        ))
    }
}

/// What a Ctrl-C says while a run is at a step (None: only that it was interrupted).
static INTERRUPTED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn say_when_interrupted(note: Option<String>) {
    if let Ok(mut n) = INTERRUPTED.lock() {
        *n = note;
    }
}

/// From the first call on, a SIGINT (Ctrl-C) ends this process with status 130 after saying
/// where the run stopped and how to resume it (it ended silently). The steps' commands run in
/// process groups of their own, so the terminal's Ctrl-C reaches only this process; they die
/// with it (`dies_with_this_process`).
fn watch_interrupt() {
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(|| {
        let (ready, registered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(rt) = crate::deployment::runtime() else {
                let _ = ready.send(());
                return;
            };
            rt.block_on(async move {
                let sigint =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
                let _ = ready.send(());
                let Ok(mut sigint) = sigint else {
                    return;
                };
                sigint.recv().await;
                let note = INTERRUPTED.lock().ok().and_then(|n| n.clone());
                eprintln!("tandem: {}", note.as_deref().unwrap_or("interrupted"));
                std::process::exit(130);
            });
        });
        let _ = registered.recv();
    });
}

/// One procedure run in the audit log: who, when, its steps (the runbooks' step records; a
/// single-shot procedure's plan), its result and report.
#[derive(Serialize)]
pub struct AuditLine<'a, S: Serialize> {
    pub run_id: &'a str,
    pub procedure: &'a str,
    pub user: &'a str,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub result: &'a str,
    pub error: Option<&'a str>,
    pub resumed: u32,
    pub steps: S,
    pub report: &'a Value,
}

/// Appends one run's line to the deployment's audit log (`DIR/audit.log`), synced. A log that
/// cannot be written does not fail the procedure it records.
pub fn append_audit<S: Serialize>(d: &Deployment, line: &AuditLine<'_, S>) {
    let Ok(line) = serde_json::to_string(line) else {
        return;
    };
    let path = d.dir().join("audit.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(f, "{line}");
        let _ = f.sync_all();
    }
}

/// Held while a procedure changes the deployment: one at a time per deployment. Two operators
/// (or one who thought a run had hung) running the chat failback twice at once would each take
/// a full backup and restore it over the primary — the later restore dropping what was written
/// after the earlier one. The lock is taken in the deployment directory and, when the share is
/// there, on the share too: two operators each with a copy of the topology (one per site, say)
/// took a lock each and raced (until session 34), the loser stopping with a false "the chat pool
/// serves nobody" and a run record that a later resume acted on. The kernel lets go of a lock
/// when its holder ends, killed or not, so an interrupted run is resumed without anything to
/// clean up.
pub struct ProcedureLock {
    _file: std::fs::File,
    _shared: Option<std::fs::File>,
}

/// The procedure lock's file on the share.
const SHARED_LOCK: &str = "procedure.lock";

/// Takes the deployment's procedure lock for `procedure`, or says which run holds it.
pub fn procedure_lock(d: &Deployment, procedure: &str) -> anyhow::Result<ProcedureLock> {
    let local = d.dir().join(".tandem").join("runs").join("procedure.lock");
    let file = take_lock(
        &local,
        procedure,
        &format!("this deployment ({})", d.dir().display()),
    )?;
    let shared = match tandem_node::log_shipping::share_ours(&d.topology) {
        Ok(()) => Some(take_lock(
            &d.topology.share.join(SHARED_LOCK),
            procedure,
            &format!(
                "this deployment, from another directory (its share {} holds the lock: another \
                 operator's copy of the topology?)",
                d.topology.share.display()
            ),
        )?),
        // Lost with a site, or refused: the procedures say so where they need it.
        Err(_) => None,
    };
    Ok(ProcedureLock {
        _file: file,
        _shared: shared,
    })
}

fn take_lock(
    path: &std::path::Path,
    procedure: &str,
    place: &str,
) -> anyhow::Result<std::fs::File> {
    let Some(mut file) = crate::deployment::try_lock(path)? else {
        let holder: Value =
            serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).unwrap_or(Value::Null);
        let who = match holder["procedure"].as_str() {
            Some(p) => format!(
                "`tandem {}` (pid {}, run by {}, since {})",
                p.replace('-', " "),
                holder["pid"],
                holder["user"].as_str().unwrap_or("?"),
                crate::output::time(holder["started_ms"].as_i64().unwrap_or(0))
            ),
            None => "another procedure".into(),
        };
        bail!(
            "{who} is running on {place}: wait until it ends, or stop it (a stopped run \
             resumes where it stopped when run again), then run this one"
        );
    };
    let holder = json!({
        "procedure": procedure,
        "pid": std::process::id(),
        "user": operator(),
        "started_ms": now_ms(),
    });
    // Who holds it, for the refusal above; the lock itself is the kernel's.
    file.set_len(0)?;
    file.write_all(holder.to_string().as_bytes())?;
    Ok(file)
}

/// The operator running a procedure, for the audit log.
pub fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid cannot fail and touches no memory of ours.
            format!("uid {}", unsafe { libc::getuid() })
        })
}

/// Runs one step command of this same program against the deployment, as an operator would;
/// its JSON document, or its one-line error.
pub fn command(d: &Deployment, args: &[&str]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("the tandem executable")?;
    let mut step = std::process::Command::new(exe);
    dies_with_this_process(&mut step);
    // A group of its own: a Ctrl-C at the terminal reaches the procedure, which says where it
    // stopped (see `watch_interrupt`), and not its step's command first.
    std::os::unix::process::CommandExt::process_group(&mut step, 0);
    let out = step
        .args(args)
        .arg("--json")
        .arg("--topology")
        .arg(&d.file)
        .output()
        .with_context(|| format!("running tandem {}", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`tandem {}`: {}",
            args.join(" "),
            err.trim().trim_start_matches("tandem: ")
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`tandem {}` printed no JSON document", args.join(" ")))
}

/// Makes a child die (SIGKILL) when this process does: a runbook or demo killed by an operator
/// leaves no step running behind it (a `db mirror install` would otherwise poll its nodes until
/// its own deadline). Linux sends the signal when the thread that started the child ends; every
/// caller waits for its child on that thread, so that is this process ending.
pub fn dies_with_this_process(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure makes only async-signal-safe calls (prctl,
        // getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Ended before the signal was asked for: nothing will send it.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A deployment of the example topology in a temporary directory (nothing started).
    fn deployment() -> (tempfile::TempDir, Deployment) {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("topology.toml");
        std::fs::write(&file, tandem_topology::example(41000, &"ab".repeat(32))).unwrap();
        std::fs::create_dir_all(t.path().join("share")).unwrap();
        let d = Deployment::load(&file).unwrap();
        (t, d)
    }

    /// Steps named `names`, each done once its name is in `done` (which running it does);
    /// running one whose name is in `fail` fails. One whose name ends with "(undoable)" is
    /// checked again when a run resumes.
    fn steps<'a>(
        names: &[&str],
        done: &'a RefCell<Vec<String>>,
        ran: &'a RefCell<Vec<String>>,
        fail: &'a RefCell<Vec<String>>,
    ) -> Vec<Step<'a>> {
        names
            .iter()
            .map(|n| {
                let n = n.to_string();
                let (c, r) = (n.clone(), n.clone());
                Step {
                    title: n.clone(),
                    command: format!("tandem {n}"),
                    check: Box::new(move |_| {
                        Ok(done.borrow().contains(&c).then(|| json!({ "done": c })))
                    }),
                    run: Box::new(move |_| {
                        if fail.borrow().contains(&r) {
                            bail!("{r} cannot be done now");
                        }
                        ran.borrow_mut().push(r.clone());
                        done.borrow_mut().push(r.clone());
                        Ok(Value::Null)
                    }),
                    verify: true,
                    recheck: n.ends_with("(undoable)"),
                }
            })
            .collect()
    }

    /// A resumed run does again the last step it recorded when that step's effect no longer
    /// holds (something changed while the run was stopped), and refuses a record made for
    /// other steps (the topology changed): a step is never skipped on a record's word alone.
    #[test]
    fn a_resumed_run_checks_its_last_step_and_its_plan() {
        let (_t, d) = deployment();
        let out = Output { json: true };
        let names = || RefCell::new(Vec::<String>::new());
        let (done, ran, fail) = (names(), names(), names());
        fail.borrow_mut().push("third".to_string());
        let book = Runbook {
            procedure: "test-procedure",
            deployment: &d,
            steps: steps(&["first", "second", "third"], &done, &ran, &fail),
            stopped: Box::new(|_| None),
        };
        let e = book
            .run(&out, |_| Ok(()), |_| Value::Null)
            .err()
            .expect("the third step fails");
        assert!(e.to_string().contains("step 3/3 (third) failed"), "{e}");
        assert_eq!(*ran.borrow(), ["first", "second"]);
        // While the run is stopped, the second step's effect is undone by hand.
        done.borrow_mut().retain(|s| s != "second");
        fail.borrow_mut().clear();
        ran.borrow_mut().clear();
        let resumed_with = RefCell::new(None);
        book.run(
            &out,
            |resuming: Option<&RunState>| {
                *resumed_with.borrow_mut() = Some(resuming.is_some());
                Ok(())
            },
            |_| Value::Null,
        )
        .unwrap();
        assert_eq!(*resumed_with.borrow(), Some(true));
        assert_eq!(*ran.borrow(), ["second", "third"], "the second done again");

        // A run recorded for other steps is not resumed by this plan.
        fail.borrow_mut().push("third".to_string());
        done.borrow_mut().clear();
        assert!(book.run(&out, |_| Ok(()), |_| Value::Null).is_err());
        let other = Runbook {
            procedure: "test-procedure",
            deployment: &d,
            steps: steps(&["first", "another", "third"], &done, &ran, &fail),
            stopped: Box::new(|_| None),
        };
        let e = other
            .run(&out, |_| Ok(()), |_| Value::Null)
            .err()
            .expect("refused");
        let e = e.to_string();
        assert!(
            e.contains("made for another plan") && e.contains("\"second\""),
            "{e}"
        );
        assert!(book.in_progress().is_some(), "the run is kept");
    }

    /// A resumed run checks again every step whose effect can be undone between runs, not only
    /// the last one it recorded: one undone is done again, before the steps after it (a
    /// failback's cleared active servers set again by hand went unseen, and the restore ran
    /// with a chat server using the database). One that cannot be undone is not checked.
    #[test]
    fn a_resumed_run_does_again_an_undoable_step_undone_since() {
        let (_t, d) = deployment();
        let out = Output { json: true };
        let names = || RefCell::new(Vec::<String>::new());
        let (done, ran, fail) = (names(), names(), names());
        fail.borrow_mut().push("fourth".to_string());
        let book = Runbook {
            procedure: "test-procedure",
            deployment: &d,
            steps: steps(
                &["first", "second (undoable)", "third", "fourth"],
                &done,
                &ran,
                &fail,
            ),
            stopped: Box::new(|s| Some(format!("{} steps done, nothing serves", s.steps.len()))),
        };
        let e = book
            .run(&out, |_| Ok(()), |_| Value::Null)
            .err()
            .expect("the fourth step fails");
        assert!(
            e.to_string().ends_with("; 3 steps done, nothing serves"),
            "what the stop leaves is said: {e}"
        );
        // Between the runs, the first two steps' effects are undone.
        done.borrow_mut()
            .retain(|s| s != "first" && s != "second (undoable)");
        fail.borrow_mut().clear();
        ran.borrow_mut().clear();
        book.run(&out, |_| Ok(()), |_| Value::Null).unwrap();
        assert_eq!(*ran.borrow(), ["second (undoable)", "fourth"]);
    }
}
