import CLinux
import Glibc

/// Who may run a guest whose memory two processes share during a local hand-over: one word in a
/// small memfd both map, changed only by compare-and-swap. The source commits before `go`; the
/// target takes the guest before its first instruction runs there; a source that rolls back, or
/// an operator resolving an in-doubt hand-off, takes it back. Exactly one side can win, so the
/// guest never runs on both sides of the same memory — and a source never resumes over memory a
/// target has already run the guest on.
public final class HandoverClaim: @unchecked Sendable {
    /// The source runs the guest (nothing committed yet).
    static let open: UInt32 = 0
    /// `go` is being sent: the target may take the guest.
    static let committed: UInt32 = 1
    /// The target took the guest and runs it.
    static let target: UInt32 = 2
    /// The source took it back (a rollback, or the operator's `cont` there).
    static let source: UInt32 = 3

    public static let size = 4096
    /// The memfd (owned), to hand to the target.
    public let fd: Int32
    private let word: UnsafeMutablePointer<UInt32>

    private init(fd: Int32) throws(MemoryError) {
        let p = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw .allocation(size: UInt64(Self.size), errno: e)
        }
        self.fd = fd
        word = p.assumingMemoryBound(to: UInt32.self)
    }

    deinit {
        munmap(word, Self.size)
        close(fd)
    }

    /// A fresh claim (the source's).
    public static func create() throws(MemoryError) -> HandoverClaim {
        let fd = clinux_memfd_create("swiftvmm-handover", UInt64(size))
        guard fd >= 0 else { throw .allocation(size: UInt64(size), errno: -fd) }
        return try HandoverClaim(fd: fd)
    }

    /// The claim a source handed over (a duplicate of `received`, which must be a sealed memfd
    /// of the claim's size); nil with the reason when it is not.
    public static func adopt(_ received: Int32) -> Result<HandoverClaim, ClaimProblem> {
        if let p = ReceivedFile.ramProblem(received, size: UInt64(size)) { return .failure(ClaimProblem(description: p)) }
        let fd = fcntl(received, F_DUPFD_CLOEXEC, 0)
        guard fd >= 0 else { return .failure(ClaimProblem(description: "cannot be duplicated")) }
        do { return .success(try HandoverClaim(fd: fd)) } catch { return .failure(ClaimProblem(description: "\(error)")) }
    }

    public struct ClaimProblem: Error, CustomStringConvertible { public let description: String }

    private func swap(_ from: UInt32, _ to: UInt32) -> Bool { clinux_atomic_cas32(word, from, to) != 0 }

    /// Source, just before `go`.
    public func commit() -> Bool { swap(Self.open, Self.committed) }
    /// Target, on `go`, before the guest runs there.
    public func takeForTarget() -> Bool { swap(Self.committed, Self.target) }
    /// Target, when the operator resolves an in-doubt hand-off there.
    public func takeForTargetInDoubt() -> Bool { swap(Self.committed, Self.target) || swap(Self.open, Self.target) }
    /// Source, rolling back or resolving an in-doubt hand-off: false once the target has the guest.
    public func takeBackForSource() -> Bool {
        swap(Self.open, Self.source) || swap(Self.committed, Self.source) || clinux_atomic_load32(word) == Self.source
    }
    /// The target took the guest (it ran there).
    public var takenByTarget: Bool { clinux_atomic_load32(word) == Self.target }
    /// The source took it back.
    public var takenBySource: Bool { clinux_atomic_load32(word) == Self.source }
}
