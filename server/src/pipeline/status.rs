//! The task's stored status, and its one writer. While the loop is live the
//! status follows the stage ([`status_at`]): the loop records it when it
//! pauses (a question, a proposal) and when a reply sets it going again. How
//! a task ends is an [`Ending`]: the loop's own (accepted, discarded, failed,
//! cancelled), or one a front end asks for with [`TaskRun::end`] (or, for a
//! task restored after a restart, [`end_stored_task`]). Front ends never
//! write the status themselves.

use super::{PipelineError, Stage, TaskRun};
use crate::store::{Store, StoreError, TaskId, TaskStatus};

/// The stored status of a task whose loop stands at `stage`; `None` at
/// [`Stage::Done`], where the [`Ending`] decides it.
///
/// `Package` keeps `awaiting_review`: the user accepted, but until the
/// proposal is packaged the stored row is still the complete proposal a
/// restarted server can offer again; packaging ends the task as accepted.
pub fn status_at(stage: Stage) -> Option<TaskStatus> {
    match stage {
        Stage::Plan
        | Stage::DesignTests
        | Stage::WriteCode
        | Stage::RunTests
        | Stage::Select
        | Stage::Validate
        | Stage::SecurityCheck
        | Stage::Critique => Some(TaskStatus::Running),
        Stage::Clarify => Some(TaskStatus::AwaitingAnswer),
        Stage::Review | Stage::Package => Some(TaskStatus::AwaitingReview),
        Stage::Done => None,
    }
}

/// How a task ends, by the loop itself or from outside it. Each is one of
/// the final [`TaskStatus`]es ([`Ending::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Accepted,
    Rejected,
    Discarded,
    Failed,
    Cancelled,
    Interrupted,
}

impl Ending {
    /// The status the ending is stored as.
    pub fn status(self) -> TaskStatus {
        match self {
            Ending::Accepted => TaskStatus::Accepted,
            Ending::Rejected => TaskStatus::Rejected,
            Ending::Discarded => TaskStatus::Discarded,
            Ending::Failed => TaskStatus::Failed,
            Ending::Cancelled => TaskStatus::Cancelled,
            Ending::Interrupted => TaskStatus::Interrupted,
        }
    }
}

/// Ends a task that has no live [`TaskRun`] (one restored from the store
/// after a restart): records `ending` with `reason`.
///
/// Errors: [`StoreError::NotFound`] for an unknown task, or the store's own.
pub fn end_stored_task(
    store: &Store,
    task: TaskId,
    ending: Ending,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    store.set_task_status(task, ending.status(), reason)
}

/// At server start: tasks a previous process left running or waiting for
/// an answer (no loop can resume them) become interrupted; proposals
/// awaiting review are kept. Returns how many were marked.
pub fn interrupt_left_over(store: &Store) -> Result<usize, StoreError> {
    store.mark_running_as_interrupted()
}

impl TaskRun {
    /// Ends the task from outside the loop (the front end decided, or the
    /// server is stopping): records `ending` with `reason` and moves to
    /// [`Stage::Done`], so the next [`TaskRun::advance`] returns
    /// `Pause::Finished` with it. Also valid after `advance` returned an
    /// error, to record the end more precisely (a cancelled task becomes
    /// interrupted when the server stops).
    ///
    /// Errors: [`PipelineError::Store`] when the status cannot be written.
    pub fn end(&mut self, ending: Ending, reason: Option<&str>) -> Result<(), PipelineError> {
        self.stage = Stage::Done;
        self.status = ending.status();
        end_stored_task(&self.deps.store, self.task, ending, reason)?;
        Ok(())
    }

    /// Records the status that goes with the current stage ([`status_at`]),
    /// with `reason`, when it differs from the one last recorded.
    pub(super) fn record_status(&mut self, reason: Option<&str>) -> Result<(), PipelineError> {
        let Some(status) = status_at(self.stage) else {
            return Ok(());
        };
        if status != self.status {
            self.deps.store.set_task_status(self.task, status, reason)?;
            self.status = status;
        }
        Ok(())
    }
}
