//! The conformance suite: every transition of SPEC §3 and §7 at the ledger level, run
//! against each engine by [`conformance_suite!`](crate::conformance_suite) in that
//! engine's tests. An engine passes when it answers exactly as described here; the HTTP
//! layer above relies on nothing else.

use std::time::Duration;

use common::protocol::{Outcome, Registration, Variables};

use crate::{
    AssignFrom, Cancellation, Counts, Cursor, Engine, Requeue, ResultRecording, SlaveDeletion, SlaveId,
    SlaveState, Submission, TaskFilter, TaskId, TaskStatus,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// Generates one `#[tokio::test]` per check of this module. `$open` is a future that
/// yields a fresh, empty ledger of the engine under test and a guard that keeps its
/// storage alive until the check ends (a temp dir, say), or `None` when the engine is
/// not available here and the caller allows skipping (it says why on stderr).
#[macro_export]
macro_rules! conformance_suite {
    ($open:expr) => {
        $crate::conformance_suite!(@tests $open;
            a_task_goes_pending_in_progress_done_and_counts_follow,
            a_result_is_recorded_exactly_once_and_every_other_report_is_told_why,
            writes_arriving_together_are_each_answered_for_themselves,
            a_non_finite_result_fails_the_task_with_words,
            a_lost_task_is_requeued_with_one_more_attempt_until_it_fails,
            cancel_takes_pending_and_in_progress_tasks_and_nothing_final,
            a_result_and_a_cancel_racing_have_one_winner,
            a_refused_submission_leaves_nothing_and_its_id_is_never_reused,
            a_submission_for_a_slave_waits_behind_pending_tasks,
            an_unassigned_task_is_pending_again_with_its_attempts_as_before,
            a_refused_offer_moves_to_the_next_slave_under_the_same_attempt,
            two_dispatchers_claiming_one_task_have_one_winner,
            a_result_racing_a_requeue_has_one_winner,
            slaves_keep_their_id_and_place_when_they_register_again,
            a_slave_holding_a_task_is_not_deleted_and_slave_ids_are_never_reused,
            pages_of_tasks_follow_the_filter_and_the_cursor,
            timestamps_are_rfc3339_utc,
            a_tasks_history_lists_every_change_in_order,
            the_health_probe_commits,
            loads_and_overdue_tasks_follow_what_is_in_progress,
            a_master_records_itself_and_is_down_once_stopped,
        );
    };
    (@tests $open:expr; $($check:ident,)*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let Some((ledger, _storage)) = $open.await else { return };
                $crate::conformance::$check(&ledger).await;
                $crate::Engine::close(&ledger).await;
            }
        )*
    };
}

fn registration(name: &str) -> Registration {
    Registration {
        name: name.to_owned(),
        url: format!("http://127.0.0.1:{}", 9000 + name.len()),
        capacity: 2,
        instance: Some(format!("{name}-run-1")),
    }
}

async fn slave<E: Engine>(ledger: &E, name: &str) -> SlaveId {
    ledger.register_slave(registration(name)).await.expect("register").id
}

async fn pending<E: Engine>(ledger: &E, expression: &str) -> TaskId {
    let variables = Variables::new();
    let task = Submission { expression, variables: &variables, delay_ms: 0 };
    ledger.insert_task(task, None).await.expect("insert")
}

/// A task in progress on `on` under attempt 1.
async fn running<E: Engine>(ledger: &E, on: SlaveId) -> TaskId {
    let id = pending(ledger, "1+1").await;
    let assigned =
        ledger.assign(id, AssignFrom::Pending { attempts: 0 }, on, 1, DEADLINE).await.expect("assign");
    assert!(assigned, "a pending task is assigned");
    id
}

async fn status<E: Engine>(ledger: &E, id: TaskId) -> TaskStatus {
    ledger.task(id).await.expect("read").expect("task exists").status
}

pub async fn a_task_goes_pending_in_progress_done_and_counts_follow<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let mut variables = Variables::new();
    variables.insert("x".to_owned(), 2.0);
    let task = Submission { expression: "sqrt(x)*pi", variables: &variables, delay_ms: 7000 };
    let id = ledger.insert_task(task, None).await.unwrap();
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Pending);
    assert_eq!((stored.expression.as_str(), stored.delay_ms, stored.attempts), ("sqrt(x)*pi", 7000, 0));
    assert_eq!(stored.variables().unwrap(), variables);
    assert_eq!((stored.slave_id, stored.assigned_at, stored.finished_at), (None, None, None));
    assert_eq!(ledger.counts().await.unwrap(), Counts { pending: 1, ..Counts::default() });
    assert_eq!(ledger.oldest_pending(10).await.unwrap().iter().map(|t| t.id).collect::<Vec<_>>(), [id]);

    assert!(ledger.assign(id, AssignFrom::Pending { attempts: 0 }, one, 1, DEADLINE).await.unwrap());
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.slave_id, stored.attempts), (TaskStatus::InProgress, Some(one), 1));
    assert_eq!(stored.slave_name.as_deref(), Some("one"));
    assert!(stored.assigned_at.is_some());
    assert_eq!(ledger.counts().await.unwrap(), Counts { in_progress: 1, ..Counts::default() });
    let held = ledger.in_progress().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].id, held[0].slave_id, held[0].attempts, held[0].delay_ms), (id, one, 1, 7000));
    let on_one: Vec<_> =
        ledger.in_progress_on(one).await.unwrap().iter().map(|t| (t.id, t.attempts)).collect();
    assert_eq!(on_one, [(id, 1)]);
    assert!((0..60_000).contains(&held[0].assigned_ms_ago), "assigned just now: {held:?}");

    let recorded = ledger.record_result(id, one, 1, Outcome::Value(4.44)).await.unwrap();
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.result, stored.error), (TaskStatus::Done, Some(4.44), None));
    let finished_at = stored.finished_at.expect("a finished task has finished_at");
    // The answer carries the end exactly as stored: a long poll answers from it.
    assert_eq!(recorded, ResultRecording::Recorded { status: TaskStatus::Done, finished_at });
    assert_eq!(ledger.counts().await.unwrap(), Counts { done: 1, ..Counts::default() });
    assert!(ledger.in_progress().await.unwrap().is_empty());

    let straight = Submission { expression: "2", variables: &Variables::new(), delay_ms: 0 };
    let direct = ledger.insert_task(straight, Some((one, DEADLINE))).await.unwrap();
    let stored = ledger.task(direct).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.slave_id, stored.attempts), (TaskStatus::InProgress, Some(one), 1));
    assert!(direct > id, "ids increase");
}

pub async fn a_result_is_recorded_exactly_once_and_every_other_report_is_told_why<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    let id = running(ledger, one).await;
    let first = ledger.record_result(id, one, 1, Outcome::Value(2.0)).await.unwrap();
    assert_eq!(first.recorded_status(), Some(TaskStatus::Done));
    let again = ledger.record_result(id, one, 1, Outcome::Value(2.0)).await.unwrap();
    assert_eq!(again, ResultRecording::Duplicate);
    let different = ledger.record_result(id, one, 1, Outcome::Value(3.0)).await.unwrap();
    assert_eq!(different, ResultRecording::ConflictingOutcome { recorded: TaskStatus::Done });
    let stale = ledger.record_result(id, one, 2, Outcome::Value(2.0)).await.unwrap();
    assert_eq!(stale, ResultRecording::StaleAttempt { current: 1 });
    let other = ledger.record_result(id, two, 1, Outcome::Value(2.0)).await.unwrap();
    assert_eq!(other, ResultRecording::OtherSlave);
    let unknown = ledger.record_result(TaskId(id.0 + 1000), one, 1, Outcome::Value(2.0)).await.unwrap();
    assert_eq!(unknown, ResultRecording::NotFound);
    assert_eq!(ledger.task(id).await.unwrap().unwrap().result, Some(2.0), "the first result stands");
}

/// Submissions and results sent at once (the SQLite writer stores each kind in one
/// statement per batch): every caller gets its own id, and every report its own answer.
pub async fn writes_arriving_together_are_each_answered_for_themselves<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    let expressions: Vec<String> = (0..40).map(|n| format!("{n}+1")).collect();
    let variables = Variables::new();
    let inserts = expressions.iter().enumerate().map(|(n, expression)| {
        let task = Submission { expression, variables: &variables, delay_ms: n as u64 };
        let assignment = (n % 2 == 0).then_some((one, DEADLINE));
        ledger.insert_task(task, assignment)
    });
    let ids = futures_util::future::join_all(inserts).await;
    let mut seen = std::collections::HashSet::new();
    for (n, id) in ids.into_iter().enumerate() {
        let id = id.expect("insert");
        assert!(seen.insert(id), "ids are distinct");
        let stored = ledger.task(id).await.unwrap().expect("the id names a stored task");
        assert_eq!((stored.expression.as_str(), stored.delay_ms), (expressions[n].as_str(), n as i64));
        let expected = if n % 2 == 0 { TaskStatus::InProgress } else { TaskStatus::Pending };
        assert_eq!(stored.status, expected, "task {n}");
    }

    let (won, stale, foreign, failing) = (
        running(ledger, one).await,
        running(ledger, one).await,
        running(ledger, one).await,
        running(ledger, two).await,
    );
    let unknown = TaskId(failing.0 + 1000);
    let (first, second, stale_answer, foreign_answer, failing_answer, unknown_answer) = tokio::join!(
        ledger.record_result(won, one, 1, Outcome::Value(2.0)),
        ledger.record_result(won, one, 1, Outcome::Value(2.0)),
        ledger.record_result(stale, one, 2, Outcome::Value(2.0)),
        ledger.record_result(foreign, two, 1, Outcome::Value(2.0)),
        ledger.record_result(failing, two, 1, Outcome::Error("division by zero gives inf".to_owned())),
        ledger.record_result(unknown, one, 1, Outcome::Value(2.0)),
    );
    let mut twice = [first.unwrap(), second.unwrap()];
    twice.sort_by_key(|answer| answer.recorded_status().is_none());
    assert_eq!(twice[0].recorded_status(), Some(TaskStatus::Done));
    assert_eq!(twice[1], ResultRecording::Duplicate);
    assert_eq!(stale_answer.unwrap(), ResultRecording::StaleAttempt { current: 1 });
    assert_eq!(foreign_answer.unwrap(), ResultRecording::OtherSlave);
    assert_eq!(failing_answer.unwrap().recorded_status(), Some(TaskStatus::Failed));
    assert_eq!(unknown_answer.unwrap(), ResultRecording::NotFound);
    assert_eq!(
        (status(ledger, won).await, status(ledger, failing).await),
        (TaskStatus::Done, TaskStatus::Failed)
    );
    assert_eq!(
        (status(ledger, stale).await, status(ledger, foreign).await),
        (TaskStatus::InProgress, TaskStatus::InProgress)
    );
    let failed = ledger.task(failing).await.unwrap().unwrap();
    assert_eq!(failed.error.as_deref(), Some("division by zero gives inf"));
}

pub async fn a_non_finite_result_fails_the_task_with_words<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let id = running(ledger, one).await;
    let recorded = ledger.record_result(id, one, 1, Outcome::Value(f64::INFINITY)).await.unwrap();
    assert_eq!(recorded.recorded_status(), Some(TaskStatus::Failed));
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.result, stored.error.as_deref()), (None, Some("result is inf")));
    let errored = running(ledger, one).await;
    let outcome = Outcome::Error("division by zero gives inf".to_owned());
    assert_eq!(
        ledger.record_result(errored, one, 1, outcome).await.unwrap().recorded_status(),
        Some(TaskStatus::Failed)
    );
    assert_eq!(ledger.counts().await.unwrap(), Counts { failed: 2, ..Counts::default() });
}

pub async fn a_lost_task_is_requeued_with_one_more_attempt_until_it_fails<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let id = running(ledger, one).await;
    let lost = ledger.requeue_lost(id, one, 1, 3, "slave-1 went silent".to_owned()).await.unwrap();
    assert_eq!(lost, Requeue::Pending { attempts: 2 });
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.slave_id, stored.attempts), (TaskStatus::Pending, None, 2));
    let twice = ledger.requeue_lost(id, one, 1, 3, "again".to_owned()).await.unwrap();
    assert_eq!(twice, Requeue::NotHeld, "a requeue is fenced by status, slave and attempt");
    let late = ledger.record_result(id, one, 1, Outcome::Value(2.0)).await.unwrap();
    assert_eq!(late, ResultRecording::StaleAttempt { current: 2 });

    assert!(ledger.assign(id, AssignFrom::Pending { attempts: 2 }, one, 2, DEADLINE).await.unwrap());
    assert_eq!(
        ledger.requeue_lost(id, one, 2, 3, "r2".to_owned()).await.unwrap(),
        Requeue::Pending { attempts: 3 }
    );
    assert!(ledger.assign(id, AssignFrom::Pending { attempts: 3 }, one, 3, DEADLINE).await.unwrap());
    let last = ledger.requeue_lost(id, one, 3, 3, "it ran past its deadline".to_owned()).await.unwrap();
    assert_eq!(last, Requeue::Failed);
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Failed);
    assert_eq!(stored.error.as_deref(), Some("slave lost 3 times; last: it ran past its deadline"));
    assert_eq!(stored.attempts, 3);
}

pub async fn cancel_takes_pending_and_in_progress_tasks_and_nothing_final<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let waiting = pending(ledger, "1").await;
    assert_eq!(ledger.cancel(waiting).await.unwrap(), Cancellation::Cancelled { slave: None, attempt: 0 });
    assert_eq!(ledger.cancel(waiting).await.unwrap(), Cancellation::AlreadyFinal(TaskStatus::Cancelled));
    let held = running(ledger, one).await;
    assert_eq!(ledger.cancel(held).await.unwrap(), Cancellation::Cancelled { slave: Some(one), attempt: 1 });
    let late = ledger.record_result(held, one, 1, Outcome::Value(1.0)).await.unwrap();
    assert_eq!(late, ResultRecording::Cancelled);
    assert_eq!(status(ledger, held).await, TaskStatus::Cancelled);
    assert!(ledger.task(held).await.unwrap().unwrap().finished_at.is_some());
    assert_eq!(ledger.cancel(TaskId(held.0 + 1000)).await.unwrap(), Cancellation::NotFound);
    let refused =
        ledger.assign(waiting, AssignFrom::Pending { attempts: 0 }, one, 1, DEADLINE).await.unwrap();
    assert!(!refused, "a cancelled task is never assigned");
    assert_eq!(ledger.counts().await.unwrap(), Counts { cancelled: 2, ..Counts::default() });
}

pub async fn a_result_and_a_cancel_racing_have_one_winner<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    for _ in 0..10 {
        let id = running(ledger, one).await;
        let (recorded, cancelled) =
            tokio::join!(ledger.record_result(id, one, 1, Outcome::Value(5.0)), ledger.cancel(id));
        let recorded = recorded.unwrap();
        let cancelled = cancelled.unwrap();
        let final_status = status(ledger, id).await;
        match (recorded, cancelled) {
            (
                ResultRecording::Recorded { status: TaskStatus::Done, .. },
                Cancellation::AlreadyFinal(TaskStatus::Done),
            ) => {
                assert_eq!(final_status, TaskStatus::Done)
            }
            (ResultRecording::Cancelled, Cancellation::Cancelled { .. }) => {
                assert_eq!(final_status, TaskStatus::Cancelled)
            }
            other => panic!("a result and a cancel both won or both lost: {other:?}"),
        }
    }
}

pub async fn a_submission_for_a_slave_waits_behind_pending_tasks<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let task = Submission { expression: "2*3", variables: &Variables::new(), delay_ms: 0 };
    let waiting = pending(ledger, "1").await;
    let refused = ledger.insert_assigned_unless_waiting(task, (one, DEADLINE)).await.unwrap();
    assert_eq!(refused, None, "a task was pending: nothing stored");
    assert_eq!(ledger.counts().await.unwrap(), Counts { pending: 1, ..Counts::default() });

    assert!(ledger.assign(waiting, AssignFrom::Pending { attempts: 0 }, one, 1, DEADLINE).await.unwrap());
    let stored = ledger.insert_assigned_unless_waiting(task, (one, DEADLINE)).await.unwrap();
    let id = stored.expect("no task pending: stored");
    assert!(id > waiting);
    let row = ledger.task(id).await.unwrap().expect("the row");
    assert_eq!((row.status, row.slave_id, row.attempts), (TaskStatus::InProgress, Some(one), 1));
    assert_eq!(ledger.counts().await.unwrap(), Counts { in_progress: 2, ..Counts::default() });
    let kinds: Vec<String> =
        ledger.task_events(id).await.unwrap().unwrap().into_iter().map(|event| event.kind).collect();
    assert_eq!(kinds, ["submitted"]);
}

pub async fn a_refused_submission_leaves_nothing_and_its_id_is_never_reused<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let task = Submission { expression: "1", variables: &Variables::new(), delay_ms: 0 };
    let refused = ledger.insert_task(task, Some((one, DEADLINE))).await.unwrap();
    assert!(ledger.delete_refused_task(refused, one).await.unwrap());
    assert!(ledger.task(refused).await.unwrap().is_none());
    assert_eq!(ledger.counts().await.unwrap(), Counts::default());
    assert!(!ledger.delete_refused_task(refused, one).await.unwrap());
    let next = ledger.insert_task(task, None).await.unwrap();
    assert!(next > refused, "id {} was reused", next.0);
    assert!(!ledger.delete_refused_task(next, one).await.unwrap(), "only a task assigned at submission goes");
}

pub async fn an_unassigned_task_is_pending_again_with_its_attempts_as_before<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let id = running(ledger, one).await;
    assert_eq!(
        ledger.requeue_lost(id, one, 1, 3, "lost".to_owned()).await.unwrap(),
        Requeue::Pending { attempts: 2 }
    );
    assert!(ledger.assign(id, AssignFrom::Pending { attempts: 2 }, one, 3, DEADLINE).await.unwrap());
    ledger.unassign(id, one, 3, 2).await.unwrap();
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.slave_id, stored.attempts), (TaskStatus::Pending, None, 2));
    assert_eq!(stored.assigned_at, None);
    assert_eq!(ledger.counts().await.unwrap(), Counts { pending: 1, ..Counts::default() });
}

pub async fn a_refused_offer_moves_to_the_next_slave_under_the_same_attempt<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    let id = running(ledger, one).await;
    assert!(ledger.assign(id, AssignFrom::Slave { slave: one }, two, 1, DEADLINE).await.unwrap());
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.slave_id, stored.attempts), (Some(two), 1));
    assert!(!ledger.assign(id, AssignFrom::Slave { slave: one }, two, 1, DEADLINE).await.unwrap());
    let from_one = ledger.record_result(id, one, 1, Outcome::Value(1.0)).await.unwrap();
    assert_eq!(from_one, ResultRecording::OtherSlave);
    let from_two = ledger.record_result(id, two, 1, Outcome::Value(1.0)).await.unwrap();
    assert_eq!(from_two.recorded_status(), Some(TaskStatus::Done));
}

pub async fn two_dispatchers_claiming_one_task_have_one_winner<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    for _ in 0..10 {
        let id = pending(ledger, "1").await;
        let from = AssignFrom::Pending { attempts: 0 };
        let (first, second) = tokio::join!(
            ledger.assign(id, from, one, 1, DEADLINE),
            ledger.assign(id, from, two, 1, DEADLINE)
        );
        assert!(first.unwrap() ^ second.unwrap(), "exactly one claim of task {} wins", id.0);
    }
}

pub async fn a_result_racing_a_requeue_has_one_winner<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    for _ in 0..10 {
        let id = running(ledger, one).await;
        let (recorded, requeued) = tokio::join!(
            ledger.record_result(id, one, 1, Outcome::Value(1.0)),
            ledger.requeue_lost(id, one, 1, 3, "silent".to_owned())
        );
        let stored = ledger.task(id).await.unwrap().unwrap();
        match (recorded.unwrap(), requeued.unwrap()) {
            (ResultRecording::Recorded { status: TaskStatus::Done, .. }, Requeue::NotHeld) => {
                assert_eq!(stored.status, TaskStatus::Done)
            }
            (ResultRecording::StaleAttempt { current: 2 }, Requeue::Pending { attempts: 2 }) => {
                assert_eq!((stored.status, stored.attempts), (TaskStatus::Pending, 2))
            }
            other => panic!("a result and a requeue both won or both lost: {other:?}"),
        }
    }
}

pub async fn slaves_keep_their_id_and_place_when_they_register_again<E: Engine>(ledger: &E) {
    let first = ledger.register_slave(registration("slave-1")).await.unwrap();
    let second = ledger.register_slave(registration("slave-2")).await.unwrap();
    assert!(first.position < second.position, "registration order");
    assert_eq!((first.state, first.capacity), (SlaveState::Up, 2));
    assert_eq!(first.instance.as_deref(), Some("slave-1-run-1"));
    assert!(ledger.slave_down(first.id).await.unwrap());
    let down = ledger.slaves().await.unwrap().into_iter().find(|s| s.id == first.id).unwrap();
    assert_eq!(
        (down.state, down.last_seen_at),
        (SlaveState::Down, first.last_seen_at.clone()),
        "silence kept"
    );
    let again = Registration {
        url: "http://127.0.0.1:9100".to_owned(),
        capacity: 5,
        instance: Some("slave-1-run-2".to_owned()),
        ..registration("slave-1")
    };
    let back = ledger.register_slave(again).await.unwrap();
    assert_eq!(
        (back.id, back.position, back.registered_at.clone()),
        (first.id, first.position, first.registered_at)
    );
    assert_eq!((back.url.as_str(), back.capacity, back.state), ("http://127.0.0.1:9100", 5, SlaveState::Up));
    assert_eq!(back.instance.as_deref(), Some("slave-1-run-2"));
    let listed = ledger.slaves().await.unwrap();
    let names: Vec<_> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["slave-1", "slave-2"]);
    let seen = ledger.slave_seen(second.id, SlaveState::Draining).await.unwrap().expect("known");
    let stored = &ledger.slaves().await.unwrap()[1];
    assert_eq!((stored.state, &stored.last_seen_at), (SlaveState::Draining, &seen));
    assert!(seen >= second.last_seen_at, "seen now, by the ledger's clock");
    assert_eq!(ledger.slave_seen(SlaveId(second.id.0 + 1000), SlaveState::Up).await.unwrap(), None);
    assert!(!ledger.slave_down(SlaveId(second.id.0 + 1000)).await.unwrap());
}

pub async fn a_slave_holding_a_task_is_not_deleted_and_slave_ids_are_never_reused<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    let id = running(ledger, two).await;
    assert_eq!(ledger.delete_slave(two).await.unwrap(), SlaveDeletion::StillHoldsTasks);
    ledger.record_result(id, two, 1, Outcome::Value(1.0)).await.unwrap();
    assert_eq!(ledger.delete_slave(two).await.unwrap(), SlaveDeletion::Deleted);
    assert_eq!(ledger.delete_slave(two).await.unwrap(), SlaveDeletion::NotFound);
    let stored = ledger.task(id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.slave_id), (TaskStatus::Done, None), "history outlives the slave");
    let three = slave(ledger, "three").await;
    assert!(three > two, "slave id {} was reused", three.0);
    let order: Vec<_> = ledger.slaves().await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(order, [one, three]);
}

pub async fn pages_of_tasks_follow_the_filter_and_the_cursor<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = running(ledger, one).await;
        if n % 2 == 0 {
            ledger.record_result(id, one, 1, Outcome::Value(f64::from(n))).await.unwrap();
        }
        ids.push(id);
    }
    let page = |status, after, limit| TaskFilter { status, slave: None, page: Cursor::After(after), limit };
    let all: Vec<_> =
        ledger.tasks(page(None, TaskId(0), 100)).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(all, ids);
    let done: Vec<_> = ledger
        .tasks(page(Some(TaskStatus::Done), TaskId(0), 100))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(done, [ids[0], ids[2], ids[4]]);
    let next: Vec<_> = ledger
        .tasks(page(Some(TaskStatus::Done), ids[0], 1))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(next, [ids[2]]);
    assert_eq!(ledger.counts().await.unwrap(), Counts { in_progress: 2, done: 3, ..Counts::default() });

    // Newest first, by status and by slave.
    let two = slave(ledger, "two").await;
    let on_two = running(ledger, two).await;
    let newest =
        |status, slave, before, limit| TaskFilter { status, slave, page: Cursor::Before(before), limit };
    let ids_of = |rows: Vec<crate::TaskRow>| rows.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let top = TaskId(i64::MAX);
    assert_eq!(ids_of(ledger.tasks(newest(None, None, top, 3)).await.unwrap()), [on_two, ids[4], ids[3]]);
    assert_eq!(ids_of(ledger.tasks(newest(None, None, ids[3], 2)).await.unwrap()), [ids[2], ids[1]]);
    let done_newest = ids_of(ledger.tasks(newest(Some(TaskStatus::Done), None, ids[4], 5)).await.unwrap());
    assert_eq!(done_newest, [ids[2], ids[0]]);
    assert_eq!(ids_of(ledger.tasks(newest(None, Some(two), top, 10)).await.unwrap()), [on_two]);
    let one_in_progress = TaskFilter {
        status: Some(TaskStatus::InProgress),
        slave: Some(one),
        page: Cursor::After(TaskId(0)),
        limit: 10,
    };
    assert_eq!(ids_of(ledger.tasks(one_in_progress).await.unwrap()), [ids[1], ids[3]]);
}

pub async fn timestamps_are_rfc3339_utc<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let id = running(ledger, one).await;
    ledger.record_result(id, one, 1, Outcome::Value(1.0)).await.unwrap();
    let stored = ledger.task(id).await.unwrap().unwrap();
    let stamps = [Some(stored.submitted_at), stored.assigned_at, stored.finished_at];
    let mut previous = None;
    for stamp in stamps.into_iter().map(|stamp| stamp.expect("set")) {
        let parsed = chrono::DateTime::parse_from_rfc3339(&stamp.0).expect("RFC 3339");
        assert!(stamp.0.ends_with('Z') && stamp.0.len() == 24, "{}", stamp.0);
        assert!(previous <= Some(parsed), "submitted ≤ assigned ≤ finished");
        previous = Some(parsed);
    }
}

pub async fn the_health_probe_commits<E: Engine>(ledger: &E) {
    ledger.probe_writable().await.expect("a fresh ledger is writable");
    ledger.probe_writable().await.expect("and stays so");
}

pub async fn a_tasks_history_lists_every_change_in_order<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    let id = running(ledger, one).await;
    ledger.requeue_lost(id, one, 1, 3, "one went silent".to_owned()).await.unwrap();
    assert!(ledger.assign(id, AssignFrom::Pending { attempts: 2 }, two, 2, DEADLINE).await.unwrap());
    ledger.record_result(id, two, 2, Outcome::Value(2.0)).await.unwrap();
    let events = ledger.task_events(id).await.unwrap().expect("the task exists");
    let story: Vec<_> =
        events.iter().map(|e| (e.kind.as_str(), e.slave_name.as_deref(), e.detail.as_deref())).collect();
    assert_eq!(
        story,
        [
            ("submitted", None, None),
            ("assigned", Some("one"), Some("attempt 1")),
            ("requeued", Some("one"), Some("one went silent")),
            ("assigned", Some("two"), Some("attempt 2")),
            ("done", Some("two"), None),
        ]
    );
    assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id && pair[0].at <= pair[1].at));
    let fresh = pending(ledger, "1").await;
    let submitted = ledger.task_events(fresh).await.unwrap().expect("exists");
    assert_eq!(submitted.len(), 1);
    assert_eq!(ledger.task_events(TaskId(fresh.0 + 1000)).await.unwrap(), None);
}

pub async fn loads_and_overdue_tasks_follow_what_is_in_progress<E: Engine>(ledger: &E) {
    let one = slave(ledger, "one").await;
    let two = slave(ledger, "two").await;
    let first = running(ledger, one).await;
    let second = running(ledger, one).await;
    let late = pending(ledger, "3").await;
    assert!(ledger.assign(late, AssignFrom::Pending { attempts: 0 }, two, 1, Duration::ZERO).await.unwrap());
    let mut loads: Vec<_> =
        ledger.slave_loads().await.unwrap().iter().map(|l| (l.slave_id, l.running)).collect();
    loads.sort();
    assert_eq!(loads, [(one, 2), (two, 1)]);
    let overdue: Vec<_> =
        ledger.overdue().await.unwrap().iter().map(|t| (t.id, t.slave_id, t.attempts)).collect();
    assert_eq!(overdue, [(late, two, 1)], "only the task whose deadline passed");
    ledger.record_result(first, one, 1, Outcome::Value(2.0)).await.unwrap();
    ledger.requeue_lost(late, two, 1, 3, "late".to_owned()).await.unwrap();
    let loads: Vec<_> = ledger.slave_loads().await.unwrap().iter().map(|l| (l.slave_id, l.running)).collect();
    assert_eq!(loads, [(one, 1)]);
    assert!(ledger.overdue().await.unwrap().is_empty());
    assert_eq!(ledger.in_progress().await.unwrap()[0].id, second);
}

pub async fn a_master_records_itself_and_is_down_once_stopped<E: Engine>(ledger: &E) {
    let id = ledger.start_master("http://127.0.0.1:8080").await.unwrap();
    assert!(ledger.touch_master(id).await.unwrap());
    let masters = ledger.masters(Duration::from_secs(60)).await.unwrap();
    let listed = masters.iter().find(|m| m.id == id).expect("listed");
    assert_eq!((listed.url.as_str(), listed.up), ("http://127.0.0.1:8080", true));
    assert!(listed.started_at <= listed.last_seen_at);
    ledger.stop_master(id).await.unwrap();
    assert!(!ledger.touch_master(id).await.unwrap(), "a stopped master's row is not revived");
    let masters = ledger.masters(Duration::from_secs(60)).await.unwrap();
    assert!(!masters.iter().find(|m| m.id == id).expect("still listed").up);
    let next = ledger.start_master("http://127.0.0.1:8081").await.unwrap();
    assert!(next > id, "master ids are never reused");
}
