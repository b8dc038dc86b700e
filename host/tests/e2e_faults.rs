//! Faults on the real control plane, each landing while a probe is in flight (the probe's
//! script sleeps, so the test can see it running): the apiserver restarted, etcd frozen, kwok
//! (the node: exec and the pods) frozen, the workspace's pod deleted, the leader frozen past
//! its lease while a standby takes over, the controller killed again and again at every
//! point of its work until a workspace is due, and the apiserver restarted again and again
//! around another's pause. After each: nothing is paused before its
//! time, nothing twice, no recorded probe is replaced by an older one, `lastActivity` never
//! moves back, and the controller converges — the next probe succeeds and is recorded.
//! (Conflicts on the status and spec writes are forced by a concurrent editor in
//! `e2e_lifecycle.rs`, and by a scripted apiserver in the reconcile tests.)

mod e2e;

use e2e::{Controller, Env, exec_policy, sample_kind};
use std::time::Duration;
use workspace_culler_policy::{Activity, ProbeResult};
use workspace_culler_support::kubeflow;

const NS: &str = "faults";
/// The marker of the probe script's sleep: while it runs, a probe is in flight.
const SLEEP: &str = "2.0625";

/// A policy for `kind` whose script sleeps, then says idle; paused after `idle` seconds.
fn policy(kind: &str, idle: i32) -> serde_json::Value {
    let script = format!("#!/bin/sh\nsleep {SLEEP}\necho '{{\"has_activity\": false}}' > \"$OUTPUT_JSON_PATH\"\n");
    exec_policy(kind, &[kind], &script, idle)
}

/// Whether a probe's script is running (kwok runs exec on this machine).
fn probe_in_flight() -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("^sleep {SLEEP}$")])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty())
}

/// Wait for a probe of `controller` to start, so that most of its script's sleep is still
/// ahead when the fault lands (one already running may be about to end: it is let finish
/// first).
async fn wait_for_a_probe_in_flight(controller: &Controller) {
    let log = || controller.log();
    e2e::eventually_or(Duration::from_secs(30), "no probe in flight", log, || async {
        (!probe_in_flight()).then_some(())
    })
    .await;
    e2e::eventually_or(Duration::from_secs(30), "a probe in flight", log, || async {
        probe_in_flight().then_some(())
    })
    .await;
}

/// What must hold after every fault, given what was recorded before it.
async fn check_invariants(env: &Env, name: &str, before: &Activity, what: &str, log: &str) -> Activity {
    let ws = env.workspace(NS, name).await;
    assert!(!ws.spec.paused, "{what}: {name} was paused before its time\n{log}");
    let now = ws.activity().cloned().unwrap_or_default();
    assert!(
        now.last_activity >= before.last_activity,
        "{what}: lastActivity moved back\n{log}"
    );
    let start = |a: &Activity| a.last_probe.as_ref().map_or(0, |p| p.start_time);
    assert!(
        start(&now) >= start(before),
        "{what}: an older probe replaced a newer one\n{log}"
    );
    now
}

/// The sum of the controller's samples whose line starts with `prefix` and has `label`.
async fn counted(controller: &Controller, prefix: &str, label: &str) -> f64 {
    let (_, text) = controller.get("/metrics").await;
    e2e::sum(&text, prefix, &[label])
}

/// Wait until `controller` has logged `phrase`.
async fn said(controller: &Controller, phrase: &str, limit: Duration) {
    let what = format!("the controller to log {phrase:?}");
    e2e::eventually_or(
        limit,
        &what,
        || controller.log(),
        || async { controller.log().contains(phrase).then_some(()) },
    )
    .await;
}

/// The controller converges: a probe that started after `since` succeeds and is recorded.
async fn converges(env: &Env, name: &str, since: i64, what: &str, controller: &Controller) {
    e2e::eventually_or(
        Duration::from_secs(90),
        &format!("a successful probe after {what}"),
        || controller.log(),
        || async {
            let probe = env.activity(NS, name).await.last_probe?;
            (probe.start_time >= since && probe.result == ProbeResult::Success).then_some(())
        },
    )
    .await;
    assert!(
        !controller.log().contains("panicked"),
        "{what}: the controller panicked\n{}",
        controller.log()
    );
}

/// Wait until the workspace's pause owes no `Culled` Event (one that could not be recorded is
/// tried again 10 s later).
async fn settled(env: &Env, name: &str, controller: &Controller) {
    let what = format!("{name}'s pause to have its Culled Event");
    e2e::eventually_or(
        Duration::from_secs(60),
        &what,
        || controller.log(),
        || async {
            let ws = env.workspace(NS, name).await;
            let owes = ws
                .metadata
                .annotations
                .is_some_and(|a| a.contains_key(workspace_culler_policy::CULLED_EVENT_ANNOTATION));
            (!owes).then_some(())
        },
    )
    .await;
}

/// The workspace was paused no sooner than its `eligibleAfter`: its `Culled` Event bears the
/// time of the pause itself (the pause's own patch wrote it), not when the test saw it.
async fn paused_when_due(env: &Env, name: &str, what: &str) {
    let eligible = env.activity(NS, name).await.eligible_after();
    let paused = env.first_event_ms(NS, name, "Culled").await;
    assert!(
        paused.is_some_and(|at| at >= eligible && eligible > 0),
        "{what}: {name} paused at {paused:?}, eligibleAfter {eligible}"
    );
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_mid_probe_never_pause_wrongly_and_the_controller_converges() {
    let mut env = Env::start().await;
    env.namespace(NS, &[]).await;
    env.apply_kind(sample_kind("steady")).await;
    env.apply_policy(policy("steady", 3600)).await;
    env.running_workspace(NS, "steady", "steady", serde_json::json!({}))
        .await;
    let controller = env.controller("controller", &["--namespace", NS]);
    converges(&env, "steady", 0, "the start", &controller).await;
    let mut before = env.activity(NS, "steady").await;

    // The apiserver restarted mid-probe: the exec stream and every watch break.
    let probes = |result: &'static str| counted(&controller, "workspace_culler_probes_total{", result);
    wait_for_a_probe_in_flight(&controller).await;
    let (failed, timed_out) = (probes("result=\"Failure\"").await, probes("result=\"Timeout\"").await);
    env.cp.restart("kube-apiserver").await.unwrap();
    let since = now_ms();
    before = check_invariants(&env, "steady", &before, "apiserver restart", &controller.log()).await;
    converges(&env, "steady", since, "the apiserver restart", &controller).await;
    // The probe whose exec the restart broke failed there and then; it did not wait out its
    // 10-s deadline as a Timeout.
    assert_eq!(
        probes("result=\"Timeout\"").await,
        timed_out,
        "a probe cut off by the restart timed out\n{}",
        controller.log()
    );
    assert!(
        probes("result=\"Failure\"").await > failed,
        "the probe cut off by the restart did not fail\n{}",
        controller.log()
    );

    // The apiserver gone for 10 s (connections refused): the controller waits between
    // attempts instead of retrying in a busy loop, and carries on once it is back.
    let requests = || counted(&controller, "workspace_culler_api_requests_total{", "");
    env.cp.stop("kube-apiserver");
    let attempts_before = requests().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = requests().await - attempts_before;
    env.cp.start_again("kube-apiserver").await.unwrap();
    assert!(
        attempts < 300.0,
        "{attempts} requests to an apiserver that was down for 10 s: retried without backing off"
    );
    let since = now_ms();
    before = check_invariants(&env, "steady", &before, "apiserver down", &controller.log()).await;
    converges(&env, "steady", since, "the apiserver down for 10 s", &controller).await;

    // etcd frozen mid-probe: every request hangs, then times out.
    wait_for_a_probe_in_flight(&controller).await;
    env.cp.pause("etcd");
    tokio::time::sleep(Duration::from_secs(8)).await;
    env.cp.resume("etcd");
    let since = now_ms();
    before = check_invariants(&env, "steady", &before, "etcd frozen", &controller.log()).await;
    converges(&env, "steady", since, "etcd frozen", &controller).await;

    // The node (kwok) frozen mid-probe: exec hangs until the probe's deadline.
    wait_for_a_probe_in_flight(&controller).await;
    env.cp.pause("kwok");
    tokio::time::sleep(Duration::from_secs(8)).await;
    env.cp.resume("kwok");
    let since = now_ms();
    before = check_invariants(&env, "steady", &before, "kwok frozen", &controller.log()).await;
    converges(&env, "steady", since, "kwok frozen", &controller).await;

    // The pod deleted mid-probe (Kubeflow, here its double, starts a new one).
    wait_for_a_probe_in_flight(&controller).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(env.client.clone(), NS);
    pods.delete(
        &kubeflow::pod_name("steady"),
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    let since = now_ms();
    before = check_invariants(&env, "steady", &before, "pod deleted", &controller.log()).await;
    converges(&env, "steady", since, "the pod's deletion", &controller).await;
    drop(controller);

    // The leader frozen mid-probe past its lease: the standby takes over; the old leader,
    // thawed, writes nothing more and exits.
    let elect = ["--namespace", NS, "--leader-elect"];
    let first = env.controller("replica-1", &elect);
    said(&first, "became the leader", Duration::from_secs(30)).await;
    let second = env.controller("replica-2", &elect);
    wait_for_a_probe_in_flight(&first).await;
    let pid = first.pid() as i32;
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Counted once it is stopped: a probe it finished meanwhile was written while it led.
    let written_before = first.log().matches(" probed").count();
    // The standby takes over.
    said(&second, "became the leader", Duration::from_secs(60)).await;
    let since = now_ms();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    converges(&env, "steady", since, "the lease changing hands", &second).await;
    // The thawed leader finds its lease gone when it next renews it, however late that is.
    said(&first, "lost the leader lease", Duration::from_secs(30)).await;
    let old = first.log();
    assert_eq!(
        old.matches(" probed").count(),
        written_before,
        "the old leader wrote after losing its lease\n{old}"
    );
    before = check_invariants(&env, "steady", &before, "lease lost", &second.log()).await;
    drop((first, second));

    // The controller killed again and again, at every point of its work (probing, recording,
    // pausing), while a workspace becomes due: it is paused once, and only when due.
    env.apply_kind(sample_kind("due")).await;
    env.apply_policy(policy("due", 30)).await;
    env.running_workspace(NS, "due", "due", serde_json::json!({})).await;
    let started = std::time::Instant::now();
    // Each round of lifetimes is a second longer than the last: a loaded machine starts a
    // controller more slowly, and the pause needs one to live through a probe and its patch.
    let lifetimes = [700u64, 1900, 2600, 3300, 1200, 4100, 2200, 2900];
    let mut runs = 0;
    let mut last_log = String::new();
    while !env.workspace(NS, "due").await.spec.paused {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "never paused under {runs} kills; the last killed controller's log:\n{last_log}"
        );
        let mut controller = env.controller(&format!("killed-{runs}"), &["--namespace", NS]);
        let lifetime = lifetimes[runs % lifetimes.len()] + 1000 * (runs / lifetimes.len()) as u64;
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        // SAFETY: kill(2) on the child this test started; SIGKILL, so nothing runs after.
        unsafe { libc::kill(controller.pid() as i32, libc::SIGKILL) };
        controller.kill();
        last_log = controller.log();
        runs += 1;
    }
    let last = env.controller("after-the-kills", &["--namespace", NS]);
    // Once: a controller killed between its pause and the pause's Event left the Event to
    // the next one, and one killed after the Event did not have it recorded twice.
    settled(&env, "due", &last).await;
    paused_when_due(&env, "due", &format!("after {runs} kills")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        env.events(NS, "due", "Culled").await,
        1,
        "Culled Events after {runs} kills (one per pause)\n{}",
        last.log()
    );
    before = check_invariants(&env, "steady", &before, "the kills", &last.log()).await;
    eprintln!("paused once after {runs} kills in {:?}", started.elapsed());

    // The apiserver restarted again and again around a pause (mid-read, mid-patch): paused
    // once, when due. It is up for 6 s at a time at first, half a second longer after each
    // restart: the pause needs a fresh probe (2.06 s of its script, through the apiserver) and
    // its reads and patch inside one such stretch. A probe whose exec a restart cuts off fails
    // at once; it is retried `minProbeIntervalSeconds` after it started, or 5 s after a
    // reconcile that failed on the apiserver, so anywhere in a stretch.
    env.apply_kind(sample_kind("due-again")).await;
    env.apply_policy(policy("due-again", 20)).await;
    env.running_workspace(NS, "due-again", "due-again", serde_json::json!({}))
        .await;
    let started = std::time::Instant::now();
    let mut restarts = 0;
    while !env.workspace(NS, "due-again").await.spec.paused {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "never paused under apiserver restarts\n{}",
            last.log()
        );
        tokio::time::sleep(Duration::from_millis(6000 + 500 * restarts)).await;
        env.cp.restart("kube-apiserver").await.unwrap();
        restarts += 1;
    }
    settled(&env, "due-again", &last).await;
    paused_when_due(&env, "due-again", &format!("after {restarts} apiserver restarts")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        env.events(NS, "due-again", "Culled").await,
        1,
        "Culled Events after {restarts} apiserver restarts (one per pause)\n{}",
        last.log()
    );
    check_invariants(&env, "steady", &before, "apiserver restarts", &last.log()).await;
    eprintln!(
        "paused once after {restarts} apiserver restarts in {:?}",
        started.elapsed()
    );
}
