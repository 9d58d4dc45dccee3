import Glibc
import Machine

/// Local hand-over (`send --local`), in place of the pre-check and pre-copy: the configuration,
/// then the descriptors of guest RAM, disks and TAP queues passed over the UNIX socket. The
/// target maps the same memory; no page is copied.
final class SourceLocalOffer: MigrationStep {
    var phase: MigrationPhase { .setup }

    func run(_ s: SourceSession) throws {
        guard case .unix = s.options.endpoint else {
            throw MigrationError.usage("--local needs a unix:PATH target: descriptors pass only over a UNIX socket on this host")
        }
        // A mirror does not travel (see TargetHandover.reasons); refused here too, whatever
        // the target's version.
        if let m = s.vm.devices.disks.first(where: { $0.mirror != nil }) {
            throw MigrationError.usage("volume '\(m.volume)' has a mirror, which a local hand-over does not carry: migrate it without --local")
        }
        let conn = try s.conn()
        var description = MachineDescription.of(s.vm, uuid: s.uuid)
        description.handover = true
        try conn.send(.config, bytes: try FDTCodec.encode(description.stateNode))
        // Private memory cannot be shared: the target refuses, naming the fix, on the
        // description alone; the offer then carries nothing.
        let d = description.sharedMemory ? s.vm.handOverDescriptors : HandOverDescriptors.none
        if description.sharedMemory {
            do { s.claim = try HandoverClaim.create() } catch { throw MigrationError.machine("cannot create the hand-over claim: \(error)") }
        }
        let offer = HandoverOffer(ram: d.ram.map { .init(size: $0.size) },
                                  disks: d.disks.map { .init(volume: $0.volume, path: $0.path, readonly: $0.readonly, bytes: $0.bytes) },
                                  nics: d.nics.map { .init(interface: $0.interface) }, claim: s.claim != nil)
        try conn.send(offer, descriptors: d.all + (s.claim.map { [$0.fd] } ?? []))
        _ = try conn.expect(Accept.self)
        try s.finishPreCheck(conn)
    }
}

/// Pause the guest, drain the devices, send the machine state — nothing else crosses — and
/// wait until the target has loaded it. From the pause on, this process never touches guest
/// memory again unless the hand-off fails and the guest resumes here.
final class SourceLocalStop: MigrationStep {
    var phase: MigrationPhase { .stopAndCopy }
    private var paused = false

    func run(_ s: SourceSession) throws {
        try s.cancellation.check()
        s.report.pausedAtWallNs = Clock.wallNanos()
        s.report.pausedAtMonotonic = Clock.monotonic()
        guard s.timedFreeze() else { throw MigrationError.machine("the guest stopped during the hand-over") }
        paused = true
        let stateStart = Clock.monotonic()
        let sentAt = try s.sendState(stateStart: stateStart)
        _ = try s.awaitReady(sentAt: sentAt)
        s.report.stateMs = (Clock.monotonic() - stateStart) * 1000
        try s.holdBeforeCommit()
        try s.cancellation.check()
    }

    func rollback(_ s: SourceSession) {
        guard paused else { return }
        // A target that took the guest runs it on the shared memory: never resume it here too.
        guard s.claim?.takeBackForSource() ?? true else { return }
        s.vm.thaw()
    }
}
