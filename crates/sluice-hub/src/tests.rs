//! The hub's registry, instructions and records.

use super::*;

fn hub() -> Arc<Hub> {
    hub_with("")
}

/// A hub with this configuration (`[agents]` and all).
pub(crate) fn hub_with(toml: &str) -> Arc<Hub> {
    let cfg = sluice_core::config::parse(toml, "t", &|_| None)
        .unwrap()
        .agents;
    Hub::new(cfg, HubMetrics::default())
}

#[tokio::test]
async fn statuses_only_move_forward_and_wake_waiters() {
    let h = hub();
    let (a, mut rx, _kick) = h.register(Arc::from("a1"), vec![], (vec![], vec![]));
    let id = h.new_instruction_id();
    h.send_local(&a, id.clone(), &json!({"x": 1})).unwrap();
    assert!(matches!(rx.try_recv(), Ok(Outbound::Instruction(_))));
    let waiter = {
        let h = h.clone();
        let id = id.clone();
        tokio::spawn(async move { h.wait(&id, Status::Acked, Duration::from_secs(5)).await })
    };
    assert!(h.set_status(&id, Status::Delivered, None));
    assert!(h.agent_reply(&a, &id, Status::Acked, None));
    assert_eq!(waiter.await.unwrap(), Some(Status::Acked));
    assert!(!h.set_status(&id, Status::Delivered, None), "never back");
    assert!(h.agent_reply(&a, &id, Status::Completed, Some(json!(7))));
    assert!(
        !h.set_status(&id, Status::Undelivered, None),
        "final stays final"
    );
    assert_eq!(h.record_view(&id).unwrap()["result"], 7);
    // The text written straight from the record reads as the view does,
    // with a result and without one.
    for (i, result) in [(&id, Some(7)), (&queued_instruction(&h, &a), None)] {
        let v = h.record_view(i).unwrap();
        let text = h.record_json(i).unwrap();
        assert_eq!(text, serde_json::to_vec(&v).unwrap());
        assert_eq!(v["id"], **i);
        assert_eq!(v["agent_id"], "a1");
        assert_eq!(v.get("result").map(|r| r.as_i64()), result.map(Some));
        assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(v["updated_at"].as_str().is_some());
        assert!(v["status"].as_str().is_some());
    }
    // Another agent cannot answer for it.
    let (b, _rxb, _) = h.register(Arc::from("b1"), vec![], (vec![], vec![]));
    let id2 = h.new_instruction_id();
    h.send_local(&a, id2.clone(), &json!(null)).unwrap();
    assert!(!h.agent_reply(&b, &id2, Status::Acked, None));
    // Disconnecting reports what was not acknowledged.
    h.unregister(&a, "test", false);
    assert_eq!(h.record_view(&id2).unwrap()["status"], "undelivered");
    assert_eq!(h.record_view(&id).unwrap()["status"], "completed");
}

#[tokio::test]
async fn queue_full_and_replacement() {
    let h = hub();
    let (a, _rx, _kick) = h.register(Arc::from("a"), vec![Arc::from("g")], (vec![], vec![]));
    for _ in 0..h.cfg.queue_depth {
        h.send_local(&a, h.new_instruction_id(), &json!(1)).unwrap();
    }
    let over = h.send_local(&a, h.new_instruction_id(), &json!(1));
    assert_eq!(
        over,
        Err(SendError::QueueFull {
            depth: h.cfg.queue_depth
        })
    );
    assert_eq!(a.queue_depth(), h.cfg.queue_depth);
    let (b, _rxb, _) = h.register(Arc::from("a"), vec![], (vec![], vec![]));
    assert_eq!(h.get("a").unwrap().session, b.session);
    assert_eq!(h.connected(), 1);
    // The old session ending does not remove the new one.
    h.unregister(&a, "replaced", false);
    assert_eq!(h.connected(), 1);
    assert_eq!(h.list(Some("g")).len(), 0);
    // Records are bounded, by count and by the bytes of their results.
    let small = {
        let mut cfg = h.cfg.clone();
        cfg.max_result_bytes = 100;
        Hub::new(cfg, HubMetrics::default())
    };
    let (x, _rxx, _) = small.register(Arc::from("x"), vec![], (vec![], vec![]));
    let first = small.new_instruction_id();
    let second = small.new_instruction_id();
    for id in [&first, &second] {
        small.send_local(&x, id.clone(), &json!(1)).unwrap();
    }
    assert!(small.agent_reply(&x, &first, Status::Completed, Some(json!("a".repeat(60)))));
    assert!(small.record_view(&first).is_some());
    assert!(small.agent_reply(&x, &second, Status::Completed, Some(json!("b".repeat(60)))));
    assert!(
        small.record_view(&first).is_none(),
        "the oldest went to stay under 100 bytes"
    );
    assert_eq!(
        small.record_view(&second).unwrap()["result"],
        "b".repeat(60)
    );
    let ids: Vec<_> = (0..h.cfg.max_instructions + 5)
        .map(|_| h.new_instruction_id())
        .collect();
    for id in &ids {
        h.create_record(id, Arc::from("x"), vec![]);
    }
    assert!(h.record_view(&ids[0]).is_none());
    assert!(h.record_view(ids.last().unwrap()).is_some());
}

#[test]
fn connects_are_paced_by_a_bucket_a_tenth_of_a_second_deep() {
    let unpaced = hub();
    assert!((0..10_000).all(|_| unpaced.admit_connect().is_ok()));
    assert_eq!(unpaced.reconnect_jitter_ms(), 1000);
    let h = hub_with("[agents]\nmax_connects_per_sec = 4\n");
    for _ in 0..4 {
        assert!(h.admit_connect().is_ok());
    }
    let wait = h.admit_connect().unwrap_err();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(250),
        "{wait:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(h.admit_connect().is_ok(), "refilled at 4 per second");
    // At 1,000 per second a storm gets 100 at once (a tenth of a second's
    // worth), then one per millisecond — not a thousand in one instant.
    let h = hub_with("[agents]\nmax_connects_per_sec = 1000\n");
    let admitted = (0..1000).take_while(|_| h.admit_connect().is_ok()).count();
    assert!((100..=102).contains(&admitted), "{admitted}");
    assert!(
        sluice_core::config::parse("[agents]\nmax_connects_per_sec = 20000000\n", "t", &|_| {
            None
        })
        .is_err()
    );
}

#[tokio::test]
async fn one_task_pings_each_session_once_per_beat_and_ends_the_silent() {
    let h = hub_with("[agents]\nheartbeat_ms = 100\nmissed_heartbeats = 2\n");
    let (a, mut rx_a, kick_a) = h.register(Arc::from("a"), vec![], (vec![], vec![]));
    let (_b, _rx_b, mut kick_b) = h.register(Arc::from("b"), vec![], (vec![], vec![]));
    let t0 = tokio::time::Instant::now();
    let b_kicked = tokio::spawn(async move {
        kick_b.changed().await.unwrap();
        let k = *kick_b.borrow();
        (t0.elapsed(), k)
    });
    h.start_heartbeats();
    h.start_heartbeats(); // once: a second task would ping twice per beat
    // `a` answers every ping, `b` never does.
    let mut pings = 0;
    while t0.elapsed() < Duration::from_millis(450) {
        while let Ok(f) = rx_a.try_recv() {
            assert!(matches!(f, Outbound::Ping));
            pings += 1;
            a.last_seen
                .store(sluice_core::resilience::now_nanos(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        (3..=6).contains(&pings),
        "{pings} pings in 450 ms at 100 ms"
    );
    assert_eq!(*kick_a.borrow(), Kick::None, "an answering agent stays");
    // `b`, silent past two beats, was told to go — not before.
    let (after, kick) = tokio::time::timeout(Duration::from_secs(2), b_kicked)
        .await
        .expect("the silent agent was never told to go")
        .unwrap();
    assert_eq!(kick, Kick::Silent);
    assert!(
        after >= Duration::from_millis(200) && after < Duration::from_millis(500),
        "{after:?}"
    );
    // A session that ended is not pinged any more.
    h.unregister(&a, "test", false);
    while rx_a.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(rx_a.try_recv().is_err(), "pinged after it ended");
}

#[tokio::test]
async fn membership_changes_when_agents_come_and_go_not_with_instructions() {
    let h = hub();
    let mut members = h.membership();
    let (a, _rx, _kick) = h.register(Arc::from("a"), vec![], (vec![], vec![]));
    assert!(members.has_changed().unwrap(), "a connect is a change");
    members.mark_unchanged();
    let id = h.new_instruction_id();
    h.send_local(&a, id.clone(), &json!(1)).unwrap();
    assert!(h.agent_reply(&a, &id, Status::Acked, None));
    assert!(!members.has_changed().unwrap(), "an instruction is not");
    h.unregister(&a, "test", false);
    assert!(members.has_changed().unwrap(), "leaving is a change");
}

/// An instruction routed to another replica: its record is made before the
/// agent's groups are known, and a status that comes back first is held,
/// then published with the groups, in order, once they are known.
#[tokio::test]
async fn statuses_before_the_groups_are_known_are_held_then_published_with_them() {
    let h = hub();
    let mut events = h.subscribe();
    let next = |events: &mut broadcast::Receiver<Arc<str>>| -> Value {
        serde_json::from_str(&events.try_recv().unwrap()).unwrap()
    };
    let id = h.new_instruction_id();
    let pending = h.create_record_pending(&id, Arc::from("far"));
    assert!(h.set_status(&id, Status::Delivered, None));
    assert!(h.set_status(&id, Status::Acked, None));
    let acked = h.wait(&id, Status::Acked, Duration::ZERO).await;
    assert_eq!(acked, Some(Status::Acked));
    assert!(
        events.try_recv().is_err(),
        "held until the groups are known"
    );
    pending.placed(vec![Arc::from("g1"), Arc::from("g2")]);
    let e = next(&mut events);
    assert_eq!(e["type"], "instruction.acked");
    assert_eq!(e["agent_id"], "far");
    assert_eq!(e["groups"], json!(["g1", "g2"]));
    assert!(e["ts"].is_string());
    assert!(events.try_recv().is_err(), "delivered is not an event");
    // Known now: the next status goes out at once, with its groups.
    assert!(h.set_status(&id, Status::Completed, Some(json!({"ok": true}))));
    let e = next(&mut events);
    assert_eq!(e["type"], "instruction.completed");
    assert_eq!(e["groups"], json!(["g1", "g2"]));
    assert_eq!(e["result"], json!({"ok": true}));
    assert_eq!(h.record_groups(&id).unwrap().len(), 2);
    // Nothing held: placing it publishes nothing.
    let id2 = h.new_instruction_id();
    h.create_record_pending(&id2, Arc::from("far"))
        .placed(vec![]);
    assert!(events.try_recv().is_err());
    assert!(h.set_status(&id2, Status::Acked, None));
    assert_eq!(next(&mut events)["groups"], json!([]));
    // Not routed: the record is gone, and nothing it held comes out.
    let id3 = h.new_instruction_id();
    let pending = h.create_record_pending(&id3, Arc::from("far"));
    assert!(h.set_status(&id3, Status::Undelivered, None));
    pending.unsent();
    assert!(h.record_view(&id3).is_none());
    assert!(events.try_recv().is_err());
    // Given up half-way (the caller left while Redis answered): what it
    // held goes out without groups rather than never.
    let id4 = h.new_instruction_id();
    let pending = h.create_record_pending(&id4, Arc::from("far"));
    assert!(h.set_status(&id4, Status::Acked, None));
    assert!(events.try_recv().is_err());
    drop(pending);
    let e = next(&mut events);
    assert_eq!((&e["id"], &e["groups"]), (&json!(&*id4), &json!([])));
}

/// Records dropped unsent (routing found no agent) leave no place behind in
/// the order, even with records made after them: else they would count
/// against `max_instructions` and evict live records early.
#[tokio::test]
async fn forgotten_records_leave_no_place_behind() {
    let h = hub_with("[agents]\nmax_instructions = 3\n");
    let (a, _rx, _kick) = h.register(Arc::from("a"), vec![], (vec![], vec![]));
    let live = h.new_instruction_id();
    h.send_local(&a, live.clone(), &json!(1)).unwrap();
    for _ in 0..10 {
        let gone = h.new_instruction_id();
        let pending = h.create_record_pending(&gone, Arc::from("far"));
        let later = h.new_instruction_id();
        h.create_record(&later, Arc::from("x"), vec![]);
        pending.unsent();
        h.forget(&later);
    }
    assert!(
        h.record_view(&live).is_some(),
        "evicted by left-over places"
    );
    assert_eq!(h.records.lock().unwrap().order.len(), 1);
    // Sent again (its agent moved) and not placed: the record is as it was.
    assert!(h.set_status(&live, Status::Delivered, None));
    let pending = h.create_record_pending(&live, Arc::from("a"));
    assert_eq!(h.record_view(&live).unwrap()["status"], "queued");
    pending.unsent();
    assert_eq!(h.record_view(&live).unwrap()["status"], "delivered");
    assert_eq!(h.records.lock().unwrap().order.len(), 1);
}

#[test]
fn instruction_ids_are_the_seed_and_the_count_in_hex() {
    for (seed, n) in [
        (0, 0),
        (u64::MAX, u32::MAX),
        (0x0123_4567_89ab_cdef, 0xfedc_ba98),
        (1 << 60, 17),
    ] {
        assert_eq!(&*instruction_id(seed, n), format!("ins_{seed:016x}{n:08x}"));
    }
    let h = hub();
    let (a, b) = (h.new_instruction_id(), h.new_instruction_id());
    assert!(a.starts_with("ins_") && a.len() == 28 && a != b, "{a} {b}");
}

/// A fresh queued instruction for `a` (no result yet).
fn queued_instruction(h: &Arc<Hub>, a: &Arc<crate::AgentHandle>) -> Arc<str> {
    let id = h.new_instruction_id();
    h.send_local(a, id.clone(), &json!({"y": 2})).unwrap();
    id
}

#[tokio::test]
async fn a_delivered_wakes_no_waiter_an_ack_does() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    struct Wakes(AtomicUsize);
    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let h = hub();
    let (a, _rx, _kick) = h.register(Arc::from("w"), vec![], (vec![], vec![]));
    let id = h.new_instruction_id();
    h.send_local(&a, id.clone(), &json!(1)).unwrap();
    let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
    let waker = futures_util::task::waker(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let waiting = h.wait(&id, Status::Acked, Duration::from_secs(5));
    tokio::pin!(waiting);
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    assert!(h.set_status(&id, Status::Delivered, None));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "delivered wakes nobody");
    assert!(h.agent_reply(&a, &id, Status::Acked, None));
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "the ack wakes the waiter"
    );
    assert_eq!(
        waiting.as_mut().poll(&mut cx),
        Poll::Ready(Some(Status::Acked))
    );
}
