import Foundation
import Machine

/// A mirrored volume as the source describes it to the target (part of `MachineDescription`):
/// the mirror's generation id, whether it is in sync, and the checksum of its dirty-region map.
/// A target whose file for the volume carries the same generation takes it as the volume — no
/// disk data moves — but only when the source says in sync and the checksum is that of an
/// empty map for the generation and the target's image size (nothing is taken on trust).
public struct MirrorClaim: Sendable, Equatable {
    public var volume: String
    public var generation: String
    public var inSync: Bool
    public var mapChecksum: String
    public var dirtyBytes: UInt64

    public init(_ s: DiskMirror.Status) {
        volume = s.volume; generation = s.generation; inSync = s.phase == .inSync && s.identityRecorded
        mapChecksum = s.mapChecksum; dirtyBytes = s.dirtyBytes
    }

    static let maxClaims = 64

    static func node(_ claims: [MirrorClaim]) -> StateNode {
        var n = StateNode(name: "mirrors")
        for (i, c) in claims.enumerated() {
            var m = StateNode(name: "mirror@\(i)")
            m.set("volume", string: c.volume)
            m.set("generation", string: c.generation)
            m.set("in-sync", c.inSync)
            m.set("map-checksum", string: c.mapChecksum)
            m.set("dirty-bytes", c.dirtyBytes)
            n.children.append(m)
        }
        return n
    }

    /// Decodes the claims from an untrusted tree (absent: none).
    static func decode(_ node: StateNode?) throws(MigrationError) -> [MirrorClaim] {
        guard let node else { return [] }
        guard node.children.count <= maxClaims else { throw .stream("the source describes \(node.children.count) mirrors (at most \(maxClaims))") }
        var out: [MirrorClaim] = []
        do {
            for n in node.children {
                let c = MirrorClaim(volume: try n.string("volume"), generation: try n.string("generation"), inSync: try n.bool("in-sync"),
                                    mapChecksum: try n.string("map-checksum"), dirtyBytes: try n.integer("dirty-bytes"))
                guard !c.volume.isEmpty, MirrorIdentity.isGeneration(c.generation), c.mapChecksum.utf8.count == 16 else {
                    throw MigrationError.stream("mirror of volume '\(c.volume.prefix(64))' is malformed in the stream")
                }
                guard !out.contains(where: { $0.volume == c.volume }) else { throw MigrationError.stream("the source describes volume '\(c.volume)' twice as mirrored") }
                out.append(c)
            }
        } catch let e as MigrationError { throw e } catch {
            throw .stream("mirror description is malformed: \(error)")
        }
        return out
    }

    init(volume: String, generation: String, inSync: Bool, mapChecksum: String, dirtyBytes: UInt64) {
        self.volume = volume; self.generation = generation; self.inSync = inSync; self.mapChecksum = mapChecksum; self.dirtyBytes = dirtyBytes
    }
}

/// The target's side: which of its volumes are the source's in-sync mirrors, and why a file
/// that is a mirror of the guest's volume cannot stand in for it.
enum MirrorCheck {
    /// Outcome for one claim against the target's file for the volume.
    enum Verdict: Equatable { case present, notAMirror, problem(String) }

    static func verdict(_ c: MirrorClaim, disks: [DiskConfig]) -> Verdict {
        guard let d = disks.first(where: { $0.volume == c.volume }) else { return .notAMirror }
        guard let theirs = MirrorIdentity.read(path: d.path) else { return .notAMirror }
        guard c.inSync else {
            return .problem("volume '\(c.volume)': \(d.path) is a mirror, but the source's mirror is out of sync (\(ByteSize.format(c.dirtyBytes)) to copy): run swiftvmm mirror-resync on the source first")
        }
        guard theirs == c.generation else {
            return .problem("volume '\(c.volume)': \(d.path) is a stale mirror (generation \(theirs.prefix(8))…, the source's mirror is at \(c.generation.prefix(8))…)")
        }
        var st = stat()
        guard stat(d.path, &st) == 0, st.st_size > 0,
              MirrorIdentity.emptyMapChecksum(generation: theirs, bytes: UInt64(st.st_size)) == c.mapChecksum else {
            return .problem("volume '\(c.volume)': the source's dirty-region map for the mirror does not check out against \(d.path) (not empty, or another size)")
        }
        return .present
    }

    /// Every reason a mirror claim refuses the migration.
    static func problems(_ claims: [MirrorClaim], disks: [DiskConfig]) -> [String] {
        claims.compactMap { if case .problem(let p) = verdict($0, disks: disks) { return p } else { return nil } }
    }

    /// The volumes taken as already present through their in-sync mirror.
    static func present(_ claims: [MirrorClaim], disks: [DiskConfig]) -> [String] {
        claims.filter { verdict($0, disks: disks) == .present }.map(\.volume)
    }
}

extension MigrationReport {
    /// The volumes that moved through their mirror, and (unless `--copy-storage` sent others)
    /// the disk bytes that travelled: none.
    var mirrorJSON: [String: Any] {
        guard !mirrorVolumes.isEmpty else { return [:] }
        return ["mirror_volumes": mirrorVolumes, "disk_bytes_on_wire": rounds.reduce(UInt64(0)) { $0 + $1.diskWireBytes }]
    }
}

extension SourceSession {
    /// At the pause (requests drained): every mirror synced; a volume the target takes through
    /// its mirror must still be in the generation the pre-check confirmed, or the migration fails.
    func checkMirrorsAtPause() throws {
        for m in vm.devices.disks.compactMap(\.mirror) {
            let now = m.syncAtPause()
            guard let claim = mirrorSkips.first(where: { $0.volume == now.volume }) else { continue }
            guard now.phase == .inSync, now.generation == claim.generation else {
                throw MigrationError.machine("volume '\(now.volume)': its mirror \(now.path) fell out of sync during the migration (\(now.error ?? now.phase.rawValue)), so the target's copy would be stale; the guest keeps running here")
            }
        }
    }
}
