//! A model-based property test: random sequences of batches (appends, conflicting rewrites,
//! hard-state writes, local and leader snapshots, hence compactions), refused writes,
//! checkpoints, group removal and re-creation, and reopen, across several groups, compared with
//! an in-memory model after every step.

use fleet_core::{GroupId, ReplicaId};
use fleet_node::storage::{GroupWrite, StorageError, Store, WriteBatch};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::common::{Model, apply_batch, compare, entry, random_batch, small_config};

const GROUPS: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    Batch(u64),
    Invalid(u64),
    Checkpoint,
    Reopen,
    Remove(u64),
    Create(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => any::<u64>().prop_map(Op::Batch),
        1 => (1..=GROUPS).prop_map(Op::Invalid),
        1 => Just(Op::Checkpoint),
        2 => Just(Op::Reopen),
        1 => (1..=GROUPS).prop_map(Op::Remove),
        1 => (1..=GROUPS).prop_map(Op::Create),
    ]
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut store, _) = Store::open(config.clone()).unwrap();
    let mut model = Model::new();
    for g in 1..=GROUPS {
        store
            .create_group(GroupId(g), ReplicaId::new(1, 0), "kv")
            .unwrap()
            .wait()
            .unwrap();
        model.insert(GroupId(g), Default::default());
    }
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Batch(seed) => {
                let groups: Vec<GroupId> = model.keys().copied().collect();
                if groups.is_empty() {
                    continue;
                }
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let batch: WriteBatch = random_batch(&mut rng, &model, &groups, step as u64);
                store
                    .write(batch.clone())
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                apply_batch(&mut model, &batch);
            }
            Op::Invalid(g) => {
                let g = GroupId(g);
                let Some(m) = model.get(&g) else { continue };
                let mut w = GroupWrite::new(g);
                w.entries = vec![entry(g, m.last_index() + 2, 1, 0)];
                let r = store.write(WriteBatch {
                    groups: vec![w],
                    ..WriteBatch::default()
                });
                prop_assert!(
                    matches!(r, Err(StorageError::InvalidWrite { .. })),
                    "step {step}: {r:?}"
                );
            }
            Op::Checkpoint => store.checkpoint().unwrap().wait().unwrap(),
            Op::Reopen => {
                drop(store);
                let (s, report) = Store::open(config.clone()).unwrap();
                store = s;
                prop_assert_eq!(report.groups.len(), model.len());
            }
            Op::Remove(g) => {
                let g = GroupId(g);
                if model.remove(&g).is_some() {
                    store.remove_group(g).unwrap().wait().unwrap();
                }
            }
            Op::Create(g) => {
                let g = GroupId(g);
                if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(g) {
                    store
                        .create_group(g, ReplicaId::new(1, step as u32), "kv")
                        .unwrap()
                        .wait()
                        .unwrap();
                    slot.insert(Default::default());
                }
            }
        }
        compare(&store, &model)
            .map_err(|e| TestCaseError::fail(format!("after step {step}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
