import Foundation
import Glibc

/// The thread a virtio device does its work on: it sleeps in `poll` on a control eventfd, one
/// notify eventfd per queue (signalled by KVM through an ioeventfd, or by the MMIO write path),
/// and whatever extra descriptors the device asks for, and hands each wake-up to its owner.
/// It knows nothing about locks or devices: the owner's two closures do.
final class VirtqueueWorker: @unchecked Sendable {
    /// What the owner wants polled next, or nil to make the worker leave.
    typealias Plan = @Sendable () -> VirtioPollSet?
    typealias Handler = @Sendable (VirtioWakeReason) -> Void

    let control: EventFD
    let notifiers: [EventFD]
    private let done = NSCondition()
    private var running = false

    init(queues: Int) throws(VirtioError) {
        var n: [EventFD] = []
        for _ in 0..<queues { n.append(try EventFD()) }
        notifiers = n
        control = try EventFD()
    }

    /// Starts the thread; `plan` is asked before every sleep, `handle` after every wake-up.
    func start(name: String, plan: @escaping Plan, handle: @escaping Handler) {
        done.lock(); running = true; done.unlock()
        let t = Thread { [self] in
            Confinement.confineThread(.device, name: name)
            self.loop(plan: plan, handle: handle)
            self.done.lock(); self.running = false; self.done.broadcast(); self.done.unlock()
        }
        t.name = name
        t.stackSize = 1 << 20
        t.start()
    }

    /// Wakes the worker to look at everything.
    func wake() { control.signal() }

    /// Waits until the thread has left (after its `plan` returned nil).
    func join() {
        done.lock()
        while running { done.wait() }
        done.unlock()
    }

    private func loop(plan: Plan, handle: Handler) {
        let queueCount = notifiers.count
        while let extra = plan() {
            var fds = [pollfd(fd: control.fd, events: Int16(POLLIN), revents: 0)]
            for n in notifiers { fds.append(pollfd(fd: n.fd, events: Int16(POLLIN), revents: 0)) }
            for fd in extra.fds { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let r = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), extra.timeoutMs) }
            if r < 0 {
                if errno == EINTR { continue }
                FileHandle.standardError.write(Data("swiftvmm: virtio worker: poll failed: \(String(cString: strerror(errno))); device stopped\n".utf8))
                return
            }
            var wake = VirtioWakeReason(kicked: Array(repeating: false, count: queueCount), all: false,
                                        extra: fds[(1 + queueCount)...].map { $0.revents }, timedOut: r == 0)
            if fds[0].revents != 0 { control.drain(); wake.all = true }
            for q in 0..<queueCount where fds[1 + q].revents != 0 {
                notifiers[q].drain()
                wake.kicked[q] = true
            }
            handle(wake)
        }
    }
}
