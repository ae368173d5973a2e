//! The routing decision: a pure function of the change and the filter's
//! verdict on `before` and `after`. Every case has an explicit outcome.

use govbus_schema::Op;

/// What a subscription's view receives for one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The entity enters the view.
    Create,
    /// The entity stays in the view and changed.
    Update,
    /// The entity's current state, re-sent (snapshot/backfill).
    Snapshot,
    /// The entity leaves the view (moved out, or deleted while in it).
    Delete,
    /// The change does not concern this view.
    Nothing,
}

/// Decides for one view. `before`/`after` are `None` when the envelope has no
/// such image, else whether the filter matched it.
pub fn decide(op: Op, before: Option<bool>, after: Option<bool>) -> Decision {
    let was_in = before == Some(true);
    match (op, after) {
        (Op::Snapshot, Some(true)) => Decision::Snapshot,
        (_, Some(true)) if was_in => Decision::Update,
        (_, Some(true)) => Decision::Create,
        (_, Some(false)) | (_, None) if was_in => Decision::Delete,
        _ => Decision::Nothing,
    }
}

impl Decision {
    /// The op written to the view, if any.
    pub fn op(self) -> Option<Op> {
        match self {
            Decision::Create => Some(Op::Create),
            Decision::Update => Some(Op::Update),
            Decision::Snapshot => Some(Op::Snapshot),
            Decision::Delete => Some(Op::Delete),
            Decision::Nothing => None,
        }
    }

    /// Which images of the change the view's record carries — the one
    /// place this is decided, for the general path, the fast path and
    /// backfills: `before` (as the view held it) on an update or a leave,
    /// `after` unless the entity leaves.
    pub fn images(self) -> Images {
        Images {
            before: matches!(self, Decision::Update | Decision::Delete),
            after: !matches!(self, Decision::Delete | Decision::Nothing),
        }
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Create => "enter",
            Decision::Update => "update",
            Decision::Snapshot => "snapshot",
            Decision::Delete => "leave",
            Decision::Nothing => "filtered",
        }
    }
}

/// The images a view's record carries ([`Decision::images`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Images {
    /// The entity as it was.
    pub before: bool,
    /// The entity as it is.
    pub after: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leave_carries_only_before_and_an_entry_only_after() {
        let img = |d: Decision| (d.images().before, d.images().after);
        assert_eq!(img(Decision::Create), (false, true));
        assert_eq!(img(Decision::Snapshot), (false, true));
        assert_eq!(img(Decision::Update), (true, true));
        assert_eq!(img(Decision::Delete), (true, false));
        assert_eq!(img(Decision::Nothing), (false, false));
    }

    #[test]
    fn enter_when_after_matches_and_before_did_not() {
        assert_eq!(decide(Op::Create, None, Some(true)), Decision::Create);
        assert_eq!(
            decide(Op::Update, Some(false), Some(true)),
            Decision::Create
        );
    }

    #[test]
    fn update_when_both_match() {
        assert_eq!(decide(Op::Update, Some(true), Some(true)), Decision::Update);
    }

    #[test]
    fn leave_when_before_matched_and_after_does_not() {
        assert_eq!(
            decide(Op::Update, Some(true), Some(false)),
            Decision::Delete
        );
    }

    #[test]
    fn delete_of_a_matching_entity_is_a_delete() {
        assert_eq!(decide(Op::Delete, Some(true), None), Decision::Delete);
    }

    #[test]
    fn no_match_is_nothing() {
        assert_eq!(decide(Op::Create, None, Some(false)), Decision::Nothing);
        assert_eq!(
            decide(Op::Update, Some(false), Some(false)),
            Decision::Nothing
        );
        assert_eq!(decide(Op::Delete, Some(false), None), Decision::Nothing);
        assert_eq!(decide(Op::Delete, None, None), Decision::Nothing);
    }

    #[test]
    fn snapshots_pass_as_snapshots_or_leave() {
        assert_eq!(decide(Op::Snapshot, None, Some(true)), Decision::Snapshot);
        assert_eq!(
            decide(Op::Snapshot, Some(true), Some(false)),
            Decision::Delete
        );
        assert_eq!(decide(Op::Snapshot, None, Some(false)), Decision::Nothing);
    }
}
