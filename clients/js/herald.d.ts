// herald.d.ts — TypeScript declarations for herald.js, the Herald browser/Node client.
// Served by every node at /client/herald.d.ts. Documentation: docs/client-js.md.

/** A position in a history topic's stream: an offset means something only with its epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Reconnect backoff: delay = random(0, min(maxDelayMs, initialDelayMs * factor^attempt)). */
export interface ReconnectOptions {
  /** Ceiling of the first retry's delay (the delay itself is random below it). Default 500. */
  initialDelayMs?: number;
  /** Cap of the ceiling. Default 20000. */
  maxDelayMs?: number;
  /** Growth of the ceiling per attempt. Default 2. */
  factor?: number;
  /** A connection that got its welcome and stayed up this long resets the attempt count. Default 5000. */
  resetAfterMs?: number;
}

/** Liveness tuning (the node's JSON pings decide liveness). */
export interface LivenessOptions {
  /** Added to 2 ping intervals before a silent connection counts as dead. Default 1000. */
  slackMs?: number;
  /** After sleep or a return to the page: how long the `ping` probe waits for any frame. Default 3000. */
  probeTimeoutMs?: number;
  /** A check timer firing this much later than scheduled means the page slept: probe, don't kill. Default 2000. */
  lateTimerMs?: number;
}

/** What the client uses of a WebSocket (the browser's, or the `ws` package's in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code?: number; reason?: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
}
/**
 * A WebSocket constructor: the browser's `WebSocket`, or the `ws` package's in Node. Typed
 * loosely on purpose: the two differ in their event types, and a strict signature rejects
 * one or the other under `strict` TypeScript.
 */
export type WebSocketConstructor = new (url: string, ...rest: any[]) => any;

export interface HeraldOptions {
  /** A static JWT, sent as `{"op":"auth"}` first on every connection. */
  token?: string;
  /** Called on every (re)connect and on `token_expired`; its token is used for auth and refresh. */
  getToken?: () => string | Promise<string>;
  /** How long getToken() may take before the attempt counts as failed ("token_timeout", then backoff). Default 10000. */
  tokenTimeoutMs?: number;
  /** How long a connection may take from `new WebSocket` to the node's welcome before it is replaced. Default 15000. */
  connectTimeoutMs?: number;
  /** WebSocket constructor. Default `globalThis.WebSocket`; in Node 18/20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Backoff settings, or `false` for no reconnect (a drop closes the client). */
  reconnect?: ReconnectOptions | false;
  /**
   * Bound of the publish queue: publishes made while not connected, and while connected those made
   * behind the reconnect backlog. 0 = no queue. Full: "disconnected" (not connected) or "queue_full"
   * (connected, backlog still draining). Default 100.
   */
  offlineQueue?: number;
  /** Pace of sending the backlog queued before a reconnect's welcome. Default 50. */
  publishRatePerSecond?: number;
  /**
   * How long a publish may wait, counted from the publish() call (time spent queued included), before
   * rejecting with "timeout". Default 15000 (above the node's 10 s wait for the relay's verdict).
   */
  ackTimeoutMs?: number;
  /** With getToken: refresh this long before the token expires (lifetime exp - iat from its fetch when it has iat) if the node's notice did not come. Default 10000. */
  refreshBeforeExpiryMs?: number;
  /** Liveness tuning. */
  liveness?: LivenessOptions;
}
// Every numeric option (and field of reconnect/liveness) must be a finite number in range, or
// undefined for the default; anything else makes the constructor throw HeraldError "invalid_option".

export type HeraldState = "connecting" | "connected" | "reconnecting" | "closed";

/** Codes the node sends plus the client's own. */
export type HeraldErrorCode =
  | "forbidden" | "rate_limited" | "relay_unavailable" | "unauthorized" | "token_expired"
  | "invalid_topic" | "invalid_field" | "missing_field" | "too_many_subscriptions"
  | "recovery_overflow" | "recovery_lost"
  | "disconnected" | "queue_full" | "timeout" | "closed" | "connection_lost" | "unsubscribed"
  | "invalid_data" | "token_timeout" | "invalid_url" | "invalid_frame" | "no_websocket" | "invalid_option"
  | (string & {});

/** An error from the node (`code` is the node's error code) or from the client. */
export class HeraldError extends Error {
  constructor(code: string, message?: string, extra?: object);
  readonly name: "HeraldError";
  /** The node's error code, or a client code: disconnected, queue_full, timeout, closed, connection_lost, ... */
  readonly code: HeraldErrorCode;
  /** The topic concerned, when there is one (refused or dropped subscriptions, recovery errors). */
  readonly topic?: string;
  /** On a publish "timeout": whether it had been sent (true: it may have been published; false: it was not). */
  readonly sent?: boolean;
}

/** Delivery metadata of one message. */
export interface MessageMeta {
  topic: string;
  /** History topics only. */
  offset?: number;
  /** History topics only. */
  epoch?: string;
  /** "base64" when a raw client published binary data (then `data` is a base64 string). */
  encoding?: "base64";
}

export interface SubscribeOptions {
  /** Resume after this position (the last message you already have). Ignored when the topic is already held by another subscribe(). */
  since?: Position;
}

export interface Subscription {
  readonly topic: string;
  /** Resolves on the subscribe ack; rejects with a HeraldError ("forbidden", "relay_unavailable", "closed", ...). */
  readonly ready: Promise<void>;
  /** Removes this handler; the node is told when the topic's last handler goes. */
  unsubscribe(): void;
}

export interface PublishResult {
  /** The message's offset (history topics; otherwise undefined). */
  offset: number | undefined;
  /** The stream's epoch (history topics; otherwise undefined). */
  epoch: string | undefined;
}

export interface HeraldEvents {
  connected: { node: string; connection: string };
  disconnected: { code: number; reason: string };
  reconnecting: { attempt: number; delayMs: number };
  error: HeraldError | Error;
  /** History could not recover messages for a topic (the ack's `recovered: false`, or recovery_lost): refetch its state from the source of truth. */
  lost: { topic: string; reason: "not_recovered" | "recovery_lost" };
}

export class Herald {
  /**
   * @param url the node's base URL (`ws://host:8080`, `/ws` is added) or a full URL with a path;
   *   http(s) is mapped to ws(s); `?heartbeat=json` is always added.
   */
  constructor(url: string, options?: HeraldOptions);
  /** The URL the client connects to. */
  readonly url: string;
  readonly state: HeraldState;
  /** Subscribes a handler; several handlers on one topic share one subscription on the node. */
  subscribe(topic: string, onMessage: (data: any, meta: MessageMeta) => void, options?: SubscribeOptions): Subscription;
  /**
   * Publishes `data` (any JSON value). Resolves on the ack; rejects with the node's code, "timeout",
   * "disconnected" (not connected, offline queue full or disabled), "queue_full" (connected, the queue behind
   * the reconnect backlog is full), "invalid_data" (JSON.stringify failed: BigInt, a cycle; at once),
   * "connection_lost" (the socket dropped after it was sent: it may or may not have been published) or "closed".
   */
  publish(topic: string, data: unknown): Promise<PublishResult>;
  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof HeraldEvents>(event: E, fn: (payload: HeraldEvents[E]) => void): () => void;
  off<E extends keyof HeraldEvents>(event: E, fn: (payload: HeraldEvents[E]) => void): void;
  /** Closes for good: no reconnect; pending publishes and subscriptions reject with "closed". */
  close(): void;
}

/** The /ws URL the client would connect to for `url`. */
export function buildUrl(url: string): string;
/** A JWT's `exp` claim (seconds), read without verification; undefined if unreadable. */
export function jwtExpiry(token: string): number | undefined;
