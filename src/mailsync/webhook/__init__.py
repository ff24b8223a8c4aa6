"""The push path: Postalytics' webhooks, stored within a request and written within seconds.

`app` is the HTTP receiver (Starlette): one URL per campaign, `POST /postalytics/{drop_id}
?key=SECRET`; `receive` stores one webhook's event (normalise, match, plan: one
transaction); `trigger` starts the writes after a commit, coalescing bursts (`inline`: an
apply per location in this process; `prefect`: an injected emitter of Prefect events);
`service` builds it all from the settings. No Prefect import here: the emitter is handed in.
"""
