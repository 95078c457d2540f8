"""WorkflowService: thin proto ⇄ engine mapping."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

from grpc import aio
from squidmesh.v1 import workflow_service_pb2 as pb
from squidmesh.v1 import workflow_service_pb2_grpc as pb_grpc

from server.api import convert
from server.api.definitions import check_size, definition_from_proto
from server.api.errors import handle_errors
from server.engine.commands import Engine

Context: TypeAlias = aio.ServicerContext[Any, Any]


class WorkflowService(pb_grpc.WorkflowServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @handle_errors
    async def RegisterWorkflow(
        self, request: pb.RegisterWorkflowRequest, context: Context
    ) -> pb.RegisterWorkflowResponse:
        check_size(request.definition)
        # Off the event loop: a large definition takes a while to convert and validate.
        defn = await asyncio.to_thread(definition_from_proto, request.definition)
        version, created = await self._engine.register_workflow(defn)
        return pb.RegisterWorkflowResponse(workflow=convert.workflow(version), created=created)

    @handle_errors
    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Context
    ) -> pb.GetWorkflowResponse:
        version = await self._engine.get_workflow(request.name, request.version)
        return pb.GetWorkflowResponse(workflow=convert.workflow(version))

    @handle_errors
    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        limit = convert.page_size(request.page_size)
        after = (
            convert.decode_page_token(request.page_token, "name")["name"]
            if request.page_token
            else ""
        )
        versions = await self._engine.list_workflows(after, limit + 1)
        next_token = ""
        if len(versions) > limit:
            versions = versions[:limit]
            next_token = convert.encode_page_token({"name": versions[-1].name})
        return pb.ListWorkflowsResponse(
            workflows=[convert.workflow(v) for v in versions], next_page_token=next_token
        )
