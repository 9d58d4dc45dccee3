extension Connection {
    /// Spins, without sleeping, until data arrives or `seconds` pass. For the downtime only:
    /// the guest is paused, its CPU is free, and on a busy host a thread woken from sleep can
    /// wait milliseconds for a CPU — longer than the whole exchange.
    func spinForIncoming(seconds: Double) {
        let until = Clock.monotonic() + seconds
        while !hasIncoming() && Clock.monotonic() < until {}
    }

    /// How long the downtime's exchanges (`ready`, `go`, the final round's ack) are spun for
    /// before the thread sleeps.
    static let downtimeSpinSeconds = 0.05
}
