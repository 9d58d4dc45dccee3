import Foundation
import Glibc
import Testing
@testable import Machine
@testable import Migration

/// Whole migrations between two machines of this process: a real guest on each side, the real
/// stream over a UNIX socket, no binary in between — so cancels, refusals, broken streams and
/// the hand-off are tested in seconds.
@Suite("migration in one process", .serialized)
struct InProcessMigrationTests {
    /// memtouch dirtying 8 MiB with a heartbeat every 100 ms, for about 30 s at full speed.
    static let memtouch = "size=8M heartbeat-ms=100 passes=400000"
    /// A link too slow for memtouch: pre-copy does not converge by itself.
    static func slow(_ o: inout SendOptions) { o.maxBandwidth = 256 * 1024; o.autoConverge = false }

    @Test("memtouch migrates while it dirties memory, resumes on the target and never on the source")
    func migratesWhileGuestDirtiesMemory() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: "size=8M heartbeat-ms=100 passes=30000")
        #expect(guest.serial.waitFor("HEARTBEAT", count: 2))
        let link = try LocalMigration()
        let (_, result) = link.send(guest)
        let report = try result.get()
        #expect(guest.vm.waitForStop() == .migrated)
        let received = try #require(link.targetResult()?.success)
        #expect(report.rounds.count >= 2 && report.downtimeMs > 0 && report.totalMs >= report.downtimeMs)
        #expect(link.targetSerial.waitFor("PASS passes=30000", timeout: 120), "\(link.targetSerial.output.suffix(300))")
        #expect(!link.targetSerial.output.contains("FAIL") && !guest.serial.output.contains("FAIL"))
        #expect(received.waitForStop() == .guest(.debugExit(value: 0)))
        #expect(link.target.progress.snapshot.phase == .completed)
    }

    @Test("cancel during pre-copy: the guest keeps running on the source, the target discards everything")
    func cancelKeepsGuestRunningOnSource() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        #expect(guest.serial.waitFor("HEARTBEAT"))
        let link = try LocalMigration()
        let source = MigrationSource(vm: guest.vm, options: { var o = SendOptions(endpoint: link.endpoint); Self.slow(&o); return o }())
        let watcher = Thread {
            while source.progress.snapshot.phase != .precopy { usleep(1000) }
            source.cancel("cancelled by the test")
        }
        watcher.start()
        #expect(throws: MigrationError.cancelled("cancelled by the test")) { try source.run() }
        #expect(source.progress.snapshot.phase == .cancelled)
        let failure = link.targetResult()?.failure as? MigrationError
        #expect(failure?.description.contains("cancel") == true, "\(String(describing: failure))")
        #expect(guest.beatsAgain(), "\(guest.serial.output.suffix(200))")
        #expect(link.targetSerial.output.isEmpty)
        #expect(guest.vm.throttlePercent == 0)
    }

    @Test("cancel on the target during pre-copy: the source resumes its guest and names the target's reason")
    func targetCancelResumesSource() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let link = try LocalMigration()
        let canceller = Thread {
            while link.target.progress.snapshot.phase != .receiving { usleep(1000) }
            link.target.cancel("recv was interrupted")
        }
        canceller.start()
        let (_, result) = link.send(guest, Self.slow)
        #expect(result.failure as? MigrationError == .peer("recv was interrupted"))
        #expect(link.targetResult()?.failure as? MigrationError == .cancelled("recv was interrupted"))
        #expect(guest.beatsAgain())
    }

    /// A refused migration: the source's error mentions `sourceSays`, the target's `targetSays`
    /// (nil: a handshake refusal, after which the target keeps waiting — it is then cancelled),
    /// no page moved, and the guest runs on.
    func expectRefusal(send: (inout SendOptions) -> Void = { _ in }, receive: (inout ReceiveOptions) -> Void = { _ in },
                       sourceSays: String, targetSays: String?, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let link = try LocalMigration(receive: receive)
        let (_, result) = link.send(guest, send)
        let s = "\(result.failure.map { "\($0)" } ?? "succeeded")"
        #expect(s.contains(sourceSays), "source: \(s)", sourceLocation: sourceLocation)
        if let targetSays {
            let t = "\(link.targetResult()?.failure.map { "\($0)" } ?? "succeeded")"
            #expect(t.contains(targetSays), "target: \(t)", sourceLocation: sourceLocation)
        } else {
            #expect(link.targetResult(timeout: 0.5) == nil, "the target stopped waiting", sourceLocation: sourceLocation)
            #expect(link.target.progress.snapshot.phase == .waiting, sourceLocation: sourceLocation)
            link.target.cancel("test over")
            #expect(link.targetResult()?.failure != nil, sourceLocation: sourceLocation)
        }
        #expect(link.target.progress.snapshot.wireBytes == 0, sourceLocation: sourceLocation)
        #expect(guest.beatsAgain(), sourceLocation: sourceLocation)
    }

    @Test("refusals before memory moves name what differs, on both sides; a failed handshake leaves the target waiting")
    func refusals() throws {
        try expectRefusal(send: { $0.streamVersion = 99 }, sourceSays: "stream version 99 is not supported", targetSays: nil)
        try expectRefusal(receive: { $0.expectMemory = 128 << 20 }, sourceSays: "memory size differs", targetSays: "memory size differs")
        try expectRefusal(receive: { $0.expectCPUs = 2 }, sourceSays: "vCPU count differs: the guest has 1", targetSays: "vCPU count differs")
        try expectRefusal(receive: { $0.machine.cpuidDeny = ["0x1.0.edx:0"] }, sourceSays: "lacks features the guest uses: CPUID 0x1.0.edx bit 0",
                          targetSays: "0x1.0.edx bit 0")
        let key = Array("0123456789abcdef0123456789abcdef".utf8)
        try expectRefusal(send: { $0.key = key }, receive: { $0.key = Array("a different key, just as long!!!".utf8) },
                          sourceSays: "the target's key differs", targetSays: nil)
        try expectRefusal(receive: { $0.key = key }, sourceSays: "authentication required", targetSays: nil)
        try expectRefusal(send: { $0.key = key }, sourceSays: "the target has no key", targetSays: "authentication required")
    }

    @Test("a byte flipped on the wire is a checksum error; the source resumes and the target never runs")
    func corruptedStreamIsRejected() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let migration = try LocalMigration()
        let link = try FaultyLink(in: migration.dir, to: migration.endpoint, fault: .flipSourceByte(at: 200_000))
        var options = SendOptions(endpoint: link.endpoint)
        Self.slow(&options)
        options.maxBandwidth = 4 * 1024 * 1024
        options.compression = .none      // 8 MiB of pages: the fault lands mid-round
        let result = Result { try MigrationSource(vm: guest.vm, options: options).run() }
        let sourceError = "\(result.failure.map { "\($0)" } ?? "")"
        let targetError = "\(migration.targetResult()?.failure.map { "\($0)" } ?? "")"
        #expect(sourceError.contains("checksum mismatch") && targetError.contains("checksum mismatch"), "\(sourceError) / \(targetError)")
        #expect(guest.beatsAgain())
        #expect(migration.targetSerial.output.isEmpty)
    }

    @Test("the connection lost in the middle of a round: the source resumes, the target discards everything")
    func connectionLostMidRound() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let migration = try LocalMigration()
        let link = try FaultyLink(in: migration.dir, to: migration.endpoint, fault: .hangUpAfterSourceBytes(300_000))
        var options = SendOptions(endpoint: link.endpoint)
        Self.slow(&options)
        options.maxBandwidth = 4 * 1024 * 1024
        options.compression = .none      // 8 MiB of pages: the fault lands mid-round
        let result = Result { try MigrationSource(vm: guest.vm, options: options).run() }
        #expect((result.failure as? MigrationError).map { if case .connection = $0 { return true }; return false } == true,
                "\(String(describing: result.failure)) \(String(describing: result.success?.json))")
        #expect(migration.targetResult()?.failure != nil)
        #expect(guest.beatsAgain())
        #expect(migration.targetSerial.output.isEmpty)
    }

    @Test("the target's `ready` never arrives: the source resumes the paused guest; the target never runs it")
    func lostReadyResumesSource() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let migration = try LocalMigration()
        let link = try FaultyLink(in: migration.dir, to: migration.endpoint, fault: .hangUpWhenTargetSends(.ready))
        let result = Result { try MigrationSource(vm: guest.vm, options: SendOptions(endpoint: link.endpoint)).run() }
        #expect(result.failure != nil)
        #expect(guest.vm.stopReason == nil && !guest.vm.isPaused)
        #expect(guest.beatsAgain())
        #expect(migration.targetResult()?.failure != nil)
        #expect(migration.targetSerial.output.isEmpty)
    }

    @Test("`running` lost after `go`: the source keeps its copy paused and in doubt; the target runs the guest; the operator stops the source")
    func lostRunningLeavesOneCopy() throws {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let migration = try LocalMigration()
        let link = try FaultyLink(in: migration.dir, to: migration.endpoint, fault: .hangUpWhenTargetSends(.running))
        let source = MigrationSource(vm: guest.vm, options: SendOptions(endpoint: link.endpoint))
        let result = Result { try source.run() }
        guard case .inDoubt? = result.failure as? MigrationError else { Issue.record("\(String(describing: result.failure))"); return }
        #expect(source.progress.snapshot.phase == .inDoubt)
        #expect(guest.vm.stopReason == nil && guest.vm.isPaused)
        _ = try #require(migration.targetResult()?.success)
        #expect(migration.targetSerial.waitFor("HEARTBEAT"), "the target does not run the guest")
        guest.vm.stop(.signal(SIGTERM))          // the operator's `quit` on the source
    }

    /// A hand-off broken between `go` leaving the source and reaching the target: both sides
    /// hold a paused copy; the operator resumes one.
    func inDoubtBothSides() throws -> (LocalGuest, MigrationSource, LocalMigration) {
        let guest = try LocalGuest("memtouch.elf", cmdline: Self.memtouch)
        let migration = try LocalMigration()
        let link = try FaultyLink(in: migration.dir, to: migration.endpoint, fault: .hangUpWhenSourceSends(.go))
        let source = MigrationSource(vm: guest.vm, options: SendOptions(endpoint: link.endpoint))
        let result = Result { try source.run() }
        guard case .inDoubt? = result.failure as? MigrationError else { throw MigrationError.usage("source: \(String(describing: result.failure))") }
        guard case .inDoubt? = migration.targetResult()?.failure as? MigrationError else {
            throw MigrationError.usage("target: \(String(describing: migration.targetResult()))")
        }
        #expect(source.progress.snapshot.phase == .inDoubt && migration.target.progress.snapshot.phase == .inDoubt)
        #expect(guest.vm.isPaused && migration.target.heldMachine?.isPaused == true)
        return (guest, source, migration)
    }

    @Test("`go` lost on the way: both sides hold the guest paused; resumed on the source, it PASSes there")
    func inDoubtResumedOnSource() throws {
        let (guest, source, migration) = try inDoubtBothSides()
        #expect(source.resumeHere())
        #expect(guest.beatsAgain())
        migration.target.heldMachine?.tearDown(.signal(SIGTERM))      // `quit` on the target
        #expect(migration.targetSerial.output.isEmpty)
    }

    @Test("`go` lost on the way: resumed on the target instead, the guest continues there")
    func inDoubtResumedOnTarget() throws {
        let (guest, _, migration) = try inDoubtBothSides()
        #expect(migration.target.resumeHere())
        #expect(migration.targetSerial.waitFor("HEARTBEAT"), "the target does not run the guest")
        guest.vm.stop(.signal(SIGTERM))                                 // `quit` on the source
        migration.target.heldMachine?.tearDown(.signal(SIGTERM))
    }
}
