//! Property tests of the wire decoders: random bytes and mutated valid frames never panic and
//! never allocate beyond what the limits allow; valid batches round-trip through the encoder.
//!
//! Allocation is measured by a counting global allocator that only counts on a thread while
//! that thread asked it to (so it costs the rest of the test binary one thread-local read).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use fleet_node::transport::GroupId;
use fleet_node::transport::wire::{
    FrameEncoder, FrameLimits, StreamHello, decode_frame, decode_prefixed_frame,
};
use proptest::prelude::*;

use super::support::Msg;

struct CountingAllocator;

thread_local! {
    /// Bytes allocated and not freed since tracking started, and the peak of that.
    static TRACKED: Cell<Option<(isize, isize)>> = const { Cell::new(None) };
}

fn track(delta: isize) {
    let _ = TRACKED.try_with(|t| {
        if let Some((now, peak)) = t.get() {
            let now = now + delta;
            t.set(Some((now, peak.max(now))));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result with the peak number of bytes it had allocated at once.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    TRACKED.with(|t| t.set(Some((0, 0))));
    let result = f();
    let (_, peak) = TRACKED.with(|t| t.replace(None)).expect("tracking was on");
    (result, peak.max(0) as usize)
}

const LIMITS: FrameLimits = FrameLimits {
    frame_bytes_max: 64 * 1024,
    frame_messages_max: 256,
};

/// The most a decode may allocate: the decoded messages (each at most the input's size in
/// heap data, since postcard bounds every length by the bytes present) plus the vector.
fn allocation_bound(input_len: usize) -> usize {
    LIMITS.frame_messages_max as usize * std::mem::size_of::<(GroupId, Msg)>()
        + 2 * input_len
        + 4096
}

fn arb_msg() -> impl Strategy<Value = (GroupId, Msg)> {
    let heartbeat =
        (any::<u64>(), any::<u64>()).prop_map(|(term, commit)| Msg::Heartbeat { term, commit });
    let append = (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(term, data)| Msg::Append { term, data });
    (any::<u64>(), prop_oneof![heartbeat, append]).prop_map(|(g, m)| (GroupId(g), m))
}

fn encoder() -> FrameEncoder {
    FrameEncoder::new("c1", "n2", LIMITS)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_nor_allocate_beyond_the_limits(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_, peak) = peak_allocation(|| {
            let _ = decode_prefixed_frame::<Msg>(&bytes, &LIMITS);
            let _ = decode_frame::<Msg>(&bytes, &LIMITS);
            let _ = StreamHello::decode(&bytes);
        });
        prop_assert!(peak <= allocation_bound(bytes.len()), "allocated {peak} bytes for {} input bytes", bytes.len());
    }

    #[test]
    fn mutated_frames_never_panic_nor_allocate_beyond_the_limits(
        messages in proptest::collection::vec(arb_msg(), 0..40),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let batch = encoder().encode(&messages).unwrap();
        prop_assume!(batch.frames.len() == 1);
        let mut bytes = batch.frames[0].to_vec();
        for (index, value) in &mutations {
            let i = index.index(bytes.len());
            bytes[i] = *value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let (_, peak) = peak_allocation(|| {
            let _ = decode_prefixed_frame::<Msg>(&bytes, &LIMITS);
            if bytes.len() > 4 {
                let _ = decode_frame::<Msg>(&bytes[4..], &LIMITS);
            }
        });
        prop_assert!(peak <= allocation_bound(bytes.len()), "allocated {peak} bytes for {} input bytes", bytes.len());
    }

    #[test]
    fn batches_round_trip_within_the_limits(messages in proptest::collection::vec(arb_msg(), 0..600)) {
        let batch = encoder().encode(&messages).unwrap();
        let mut decoded = Vec::new();
        for frame in &batch.frames {
            prop_assert!(frame.len() - 4 <= LIMITS.frame_bytes_max as usize);
            let f = decode_prefixed_frame::<Msg>(frame, &LIMITS).unwrap();
            prop_assert_eq!(f.cluster_id, "c1");
            prop_assert_eq!(f.sender, "n2");
            prop_assert!(f.messages.len() <= LIMITS.frame_messages_max as usize);
            decoded.extend(f.messages);
        }
        prop_assert_eq!(decoded, messages);
    }
}

#[test]
fn an_announced_length_beyond_the_limit_allocates_nothing() {
    let mut bytes = u32::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    let (result, peak) =
        peak_allocation(|| decode_prefixed_frame::<Msg>(&bytes, &LIMITS).map(|_| ()));
    assert!(result.is_err());
    assert_eq!(peak, 0, "refused before any allocation");
}

#[test]
fn an_announced_message_count_beyond_the_limit_allocates_nothing() {
    // A valid header announcing a billion messages.
    let body = postcard::to_stdvec(&(1u32, "c1", "n2", 1_000_000_000u64)).unwrap();
    let (result, peak) = peak_allocation(|| decode_frame::<Msg>(&body, &LIMITS).map(|_| ()));
    assert!(result.is_err());
    assert_eq!(peak, 0, "refused before any allocation");
}
