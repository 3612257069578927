"""`/v1/knowledge/documents`: add, list, read and delete knowledge-base documents.

The knowledge base is the deployment's (its bot's), not a tenant's: every tenant's conversations answer
from it. A tenant's admin reads it (what its bot answers from); only an operator writes or deletes, so no
tenant rewrites what the others' users are told.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.deps import AdminPrincipal, EngineDep, OperatorPrincipal
from api.errors import ApiError, responses
from dialogue.brain.knowledge import documents
from dialogue.model.api_models import (
    ID_PATTERN,
    MAX_OFFSET,
    DocumentCreate,
    DocumentPublic,
    DocumentsPage,
    DocumentStored,
    DocumentSummary,
)

router = APIRouter(prefix="/knowledge/documents", tags=["knowledge"])

DocumentIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="The document's id.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": DocumentStored, "description": "The document was stored already with this content."},
        **responses("forbidden", "document_conflict"),
    },
)
async def create_document(
    body: DocumentCreate, engine: EngineDep, response: Response, _: OperatorPrincipal
) -> DocumentStored:
    """Add a document, or update it (a new version) when its content changed; 200 when it did not."""
    try:
        result = await run_in_threadpool(
            lambda: documents.ingest(
                engine,
                document_id=body.id,
                text=body.text,
                content_type=body.content_type,
                title=body.title,
                source=body.source,
            )
        )
    except IntegrityError as err:
        # Another request created the same document at the same moment.
        raise ApiError("document_conflict", f"document {body.id!r} is being written; retry") from err
    if not result.changed:
        response.status_code = status.HTTP_200_OK
    return DocumentStored(
        document_id=result.document_id, version=result.version, chunks=result.chunks, changed=result.changed
    )


@router.get("", responses=responses("forbidden"))
async def read_documents(
    engine: EngineDep,
    _: AdminPrincipal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DocumentsPage:
    """Documents in id order."""
    rows, total = await run_in_threadpool(documents.list_documents, engine, limit=limit, offset=offset)
    items = [DocumentSummary.model_validate(row.model_dump() | {"document_id": row.id}) for row in rows]
    return DocumentsPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{document_id}", responses=responses("forbidden", "document_not_found"))
async def read_document(document_id: DocumentIdPath, engine: EngineDep, _: AdminPrincipal) -> DocumentPublic:
    """One document with its text."""
    row = await run_in_threadpool(documents.get, engine, document_id)
    if row is None:
        raise _document_not_found(document_id)
    return DocumentPublic.model_validate(row.model_dump() | {"document_id": row.id})


@router.delete(
    "/{document_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses("forbidden", "document_not_found"),
)
async def delete_document(document_id: DocumentIdPath, engine: EngineDep, _: OperatorPrincipal) -> None:
    """Delete a document and its chunks; answers stop citing it within seconds."""
    if not await run_in_threadpool(documents.delete, engine, document_id):
        raise _document_not_found(document_id)


def _document_not_found(document_id: str) -> ApiError:
    return ApiError("document_not_found", f"document {document_id!r} does not exist")
