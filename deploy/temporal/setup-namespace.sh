#!/bin/sh
# Registers the namespace and the search attributes the conversation workflows write (the dev server
# gets the same ones from `dialogue up`); safe to run on every `up`. The `temporal` CLI reads
# TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE.
set -eu

until temporal operator cluster health | grep -q SERVING; do
  echo "waiting for the Temporal frontend at $TEMPORAL_ADDRESS"
  sleep 2
done

if ! temporal operator namespace describe --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
  temporal operator namespace create --namespace "$TEMPORAL_NAMESPACE" --retention "$NAMESPACE_RETENTION"
fi

# A new namespace reaches the frontend's cache a few seconds after it is created.
until temporal operator search-attribute list >/dev/null 2>&1; do
  sleep 1
done

# Creating one that exists fails on some server versions, so look first.
add() {
  if temporal operator search-attribute list | grep -qw "$1"; then
    echo "search attribute $1 exists"
  else
    temporal operator search-attribute create --name "$1" --type "$2"
  fi
}

# Must match dialogue.platform.temporal.SEARCH_ATTRIBUTES (tests/test_deploy.py checks it).
add DialogueStatus Keyword
add DialogueLastIntent Keyword
add DialogueTurnCount Int
add DialogueTenant Keyword
add DialogueDegradedCount Int
add DialogueHandoff Bool
add DialogueUser Keyword
add DialogueAwaits KeywordList
